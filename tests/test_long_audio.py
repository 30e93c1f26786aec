"""data.long_audio (issue 22): a clip longer than the model's audio window is chunked, truncated (counted and
warned) or refused before the model loads, by one rule (audiothink.audio.AudioWindow) that training's rollouts,
evaluation, the held-out scoring, the row checks and the vLLM rows all follow.

The ids are caught where each side hands them to the model, as tests/test_prompts.py catches them: AudioGRPOTrainer's
real rollout path (``_generate_and_score_completions`` -> TRL -> ``_tokenize_prompts`` -> ``model.generate``) and
evaluation's (``inference.generate_batch``), each with a recorder in place of ``generate``.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from audiothink.audio import SAMPLE_RATE, AudioWindow
from audiothink.data import Sample, to_dataset
from audiothink.plumbing.errors import ConfigError
from tests.helpers import PROMPT, load_toy, toy_grpo_args

# Qwen2-Audio's shortest usable clip at 16 kHz (tests/test_audio_short_clips.py: two audio tokens)
MIN = 961


@pytest.mark.parametrize("mode, samples, window, expected", [
    # 95 s under a 30 s window: four clips, the last 5 s
    ("chunk", 95 * SAMPLE_RATE, 30 * SAMPLE_RATE,
     [(0, 480000), (480000, 960000), (960000, 1440000), (1440000, 1520000)]),
    ("chunk", 480000, 480000, [(0, 480000)]),  # exactly the window: one clip
    ("chunk", 100, 480000, [(0, 100)]),  # shorter than the window: as it is (the row checks refuse a too-short clip)
    ("chunk", 480000 + MIN, 480000, [(0, 480000), (480000, 480000 + MIN)]),  # a tail of the shortest usable length
    # a tail too short for the model (one sample): the clip's last MIN samples instead, so no piece is unusable
    ("chunk", 480001, 480000, [(0, 480000), (480001 - MIN, 480001)]),
    ("chunk", 3 * 16000 + 320, 16000, [(0, 16000), (16000, 32000), (32000, 48000), (48320 - MIN, 48320)]),
    ("truncate", 95 * SAMPLE_RATE, 30 * SAMPLE_RATE, [(0, 480000)]),
    ("error", 95 * SAMPLE_RATE, 30 * SAMPLE_RATE, [(0, 480000)]),
    ("truncate", 100, 480000, [(0, 100)]),
])
def test_the_pieces_of_a_clip(mode, samples, window, expected):
    w = AudioWindow(window, mode, MIN)
    assert w.pieces(samples) == expected
    assert w.count(samples / SAMPLE_RATE) == len(expected)


def test_an_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="data.long_audio='split': must be chunk, truncate or error"):
        AudioWindow(480000, "split", MIN)


def _wav(path, seconds: float, rate: int = SAMPLE_RATE):
    """A clip of ``seconds``: a rising tone (every piece differs), 16-bit PCM as data sets ship them."""
    t = np.arange(int(round(seconds * rate))) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def _sample(path) -> Sample:
    return Sample(id="long", audio=(str(path),), question="What is heard?", choices=("a tone", "a voice"),
                  answer="a tone")


class Captured(Exception):
    pass


class GenerateRecorder:
    """Stands in for ``model.generate``: records each row's ids (padding removed) and the audio tensors, then stops
    the caller (what follows generation is not under test)."""

    def __init__(self, trainer=None):
        self.trainer, self.ids, self.audio, self.waves = trainer, [], {}, None

    def __call__(self, input_ids=None, attention_mask=None, **kwargs):
        self.ids = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        self.audio = {k: kwargs[k].detach().clone() for k in ("input_features", "feature_attention_mask")}
        if self.trainer is not None:  # the clips the vLLM rows would be sent (AudioVLLMGeneration's `waves`)
            self.waves = self.trainer._pending_waves
        raise Captured


def _trainer_ids(model_dir, tmp_path, samples, max_audio_seconds, long_audio):
    from audiothink.rewards import Format
    from audiothink.trainer import AudioGRPOTrainer

    model, processor = load_toy(model_dir)
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format()],
        args=toy_grpo_args(tmp_path, num_generations=2, per_device_train_batch_size=2),
        train_dataset=to_dataset(samples, PROMPT), max_audio_seconds=max_audio_seconds, long_audio=long_audio,
    )
    recorder = GenerateRecorder(trainer)
    trainer.model.generate = recorder
    with pytest.raises(Captured):
        trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(len(samples))])
    return recorder, processor


def _eval_ids(model_dir, samples, max_audio_seconds, long_audio):
    from audiothink.inference import generate_batch

    model, processor = load_toy(model_dir)
    recorder = GenerateRecorder()
    model.generate = recorder
    with pytest.raises(Captured):
        generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=8, max_audio_seconds=max_audio_seconds,
                       long_audio=long_audio)
    return recorder


def _runs(ids, audio_id) -> list[int]:
    """Lengths of the runs of ``<|AUDIO|>`` in ``ids`` (one run a clip)."""
    runs, prev = [], None
    for t in ids:
        if t == audio_id:
            if prev == audio_id:
                runs[-1] += 1
            else:
                runs.append(1)
        prev = t
    return runs


@pytest.fixture(scope="module")
def toy30():
    """The toy with Qwen2-Audio's real 30 s window (audiothink/toy/window30.py): the window "95 s -> 4 clips" is
    about."""
    from audiothink.toy.window30 import toy_30s_copy

    return toy_30s_copy()


@pytest.mark.parametrize("which, seconds, max_audio_seconds, clips", [
    ("toy30", 95.0, 30.0, 4),  # the 30 s window: 30 + 30 + 30 + 5 s
    ("toy", 3.02, 1.0, 4),  # the toy's own 1 s window; its last piece (20 ms) held to the shortest usable clip
])
def test_chunk_gives_the_clips_in_the_prompt_and_training_asks_what_evaluation_asks(
        which, seconds, max_audio_seconds, clips, request, tmp_path):
    """Under chunk the model is given every piece, one audio part each: training's rollout ids are evaluation's,
    audio features too; the row checks count that prompt; the vLLM rows built from the trainer's ids and clips are
    the builder's unexpanded prompt with the same pieces."""
    from audiothink.prompts import AudioPrompt, audio_token_ids, row_checks
    from audiothink.vllm_rollout import vllm_rows_from_training_ids

    model_dir = request.getfixturevalue("toy30" if which == "toy30" else "toy_model_dir")
    samples = [_sample(_wav(tmp_path / "long.wav", seconds))]
    train, processor = _trainer_ids(model_dir, tmp_path, samples, max_audio_seconds, "chunk")
    evaluation = _eval_ids(model_dir, samples, max_audio_seconds, "chunk")
    audio_id, _, _ = audio_token_ids(processor)
    window = int(processor.feature_extractor.n_samples)
    assert window == int(max_audio_seconds * SAMPLE_RATE)  # the window under test is the model's own

    assert train.ids == evaluation.ids
    runs = _runs(train.ids[0], audio_id)
    assert len(runs) == clips and runs[0] == runs[1] and runs[-1] < runs[0]  # whole windows, then the tail
    for k in ("input_features", "feature_attention_mask"):
        assert train.audio[k].shape[0] == clips
        assert torch.equal(train.audio[k], evaluation.audio[k]), k
    # the pieces follow each other: together they are the whole clip (less the tail's overlap, if any)
    wave, _ = sf.read(tmp_path / "long.wav", dtype="float32")
    pieces = train.waves[0]
    assert len(pieces) == clips and all(len(p) == window for p in pieces[:-1])
    np.testing.assert_array_equal(np.concatenate(pieces[:-1]), wave[: (clips - 1) * window])
    np.testing.assert_array_equal(pieces[-1], wave[-len(pieces[-1]):])

    # the row checks count the same prompt (its length is what data.max_prompt_tokens holds)
    from transformers import AutoConfig

    checks = row_checks(processor, PROMPT, max_prompt_tokens=None, max_audio_seconds=max_audio_seconds,
                        model_config=AutoConfig.from_pretrained(model_dir), long_audio="chunk")
    assert checks.prompt_tokens(samples[0], [seconds]) == len(train.ids[0])

    # the vLLM rows: the builder's ids, one placeholder a piece, and the pieces themselves
    rows = vllm_rows_from_training_ids(processor, train.ids, train.waves, SAMPLE_RATE)
    texts = [r["prompt"] for r in to_dataset(samples, PROMPT)]
    assert rows[0]["prompt_token_ids"] == AudioPrompt(processor).ids(texts, [clips])[0]
    sent = rows[0]["multi_modal_data"]["audio"]
    assert len(sent) == clips and all(w is p and sr == SAMPLE_RATE for (w, sr), p in zip(sent, pieces, strict=True))


def test_truncate_gives_one_clip_cut_to_the_window(toy_model_dir, tmp_path):
    """The default: one clip, the window's first samples, counted as clipped; evaluation the same."""
    samples = [_sample(_wav(tmp_path / "long.wav", 3.02))]
    train, processor = _trainer_ids(toy_model_dir, tmp_path, samples, 1.0, "truncate")
    evaluation = _eval_ids(toy_model_dir, samples, 1.0, "truncate")
    assert train.ids == evaluation.ids
    assert len(_runs(train.ids[0], processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>"))) == 1
    assert [len(p) for p in train.waves[0]] == [16000]


def _jsonl(tmp_path, seconds: float, long_rows: int):
    """16 training rows (one step's prompts on the toy: a run would get to the model), the first ``long_rows`` with
    a clip of ``seconds``, the others a 0.5 s one."""
    audio = _wav(tmp_path / "long.wav", seconds)
    short = _wav(tmp_path / "short.wav", 0.5)
    names = ["long.wav"] * long_rows + ["short.wav"] * (16 - long_rows)
    rows = [{"id": f"r{i}", "audio": name, "question": "What is heard?", "choices": ["a tone", "a voice"],
             "answer": "a tone"} for i, name in enumerate(names)]
    meta = tmp_path / "train.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return meta, audio, short


def test_truncate_warns_with_a_count_in_training(toy_model_dir, tmp_path, caplog):
    """Training's data load (the row checks, before the model loads) warns with the count of clips it will cut."""
    from transformers import AutoConfig, AutoProcessor

    from audiothink.sources import build_dataset
    from tests.helpers import data_cfg

    processor = AutoProcessor.from_pretrained(toy_model_dir)
    config = AutoConfig.from_pretrained(toy_model_dir)
    # chunked, a 3.02 s clip is 4 clips (95 s would be 95: a prompt over the toy's context, a row problem)
    for mode, seconds in (("truncate", 95.0), ("chunk", 3.02)):
        (tmp_path / mode).mkdir()
        meta, _, _ = _jsonl(tmp_path / mode, seconds, long_rows=4)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="audiothink"):
            build_dataset(data_cfg("jsonl", train=str(meta), long_audio=mode), prompt=PROMPT,
                          max_audio_seconds=1.0, processor=processor, model_config=config)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if mode == "truncate":
            assert warned == ["data: train: 4 clips are longer than the model's audio window of 1 s and are cut to "
                              "their first 1 s (data.long_audio=truncate; chunk hears all of them, error stops)"]
        else:  # chunk hears all of them: said, not warned
            assert warned == [] and any("4 clips are longer" in r.getMessage() and "chunk" in r.getMessage()
                                        for r in caplog.records)


class ModelLoaded(Exception):
    pass


def _mmau(tmp_path, seconds: float):
    """The MMAU fixture with item 3's clip made ``seconds`` long."""
    from tests.helpers import make_mmau_fixture

    meta = make_mmau_fixture(tmp_path / "mmau")
    item = json.loads(meta.read_text())[3]
    long = tmp_path / "mmau" / item["audio_id"]
    _wav(long, seconds)
    return meta, long, item["id"]


def test_truncate_warns_with_a_count_in_evaluation(tmp_path, monkeypatch, caplog):
    from audiothink import evaluate as ev
    from tests.helpers import eval_cfg

    meta, _, _ = _mmau(tmp_path, 95.0)
    monkeypatch.setattr(ev, "load_model", lambda cfg: (_ for _ in ()).throw(ModelLoaded()))
    cfg = eval_cfg([f"output_dir={tmp_path / 'out'}", "benchmark=mmau_test_mini", f"benchmark.meta={meta}"])
    with caplog.at_level(logging.INFO, logger="audiothink"), pytest.raises(ModelLoaded):
        ev.evaluate(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ("1 clip is longer than the model's audio window of 1 s and is cut to its first 1 s "
            "(data.long_audio=truncate; chunk hears all of it, error stops)") in warned


def _cli(module, name: str, argv: list[str], monkeypatch):
    """``python -m audiothink.<name> <argv>`` in this process (the command line, hydra's composition and callbacks,
    the entry point's error handling are the real ones): the exit code."""
    from hydra.core.global_hydra import GlobalHydra

    from audiothink.plumbing.cli import run_checked

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [f"audiothink.{name}", *argv])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as stop:
            run_checked(name, module.main)
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # hydra's job logging: the test process's own back
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    return stop.value.code


def test_error_stops_training_before_the_model_loads_naming_the_file(tmp_path, monkeypatch, capsys):
    import audiothink.train as entry

    meta, long, _ = _jsonl(tmp_path, 95.0, long_rows=1)
    monkeypatch.setattr(entry, "load_model_and_processor", lambda *a, **k: (_ for _ in ()).throw(ModelLoaded()))
    monkeypatch.setenv("AUDIOTHINK_CACHE", str(tmp_path / "cache"))
    code = _cli(entry, "train", ["data=jsonl", f"data.train={meta}", "data.long_audio=error",
                                 f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert err.startswith("error: ")
    named = [line for line in err.splitlines() if str(long) in line]
    assert len(named) == 1 and ("95 s, longer than the model's audio window of 1 s (data.long_audio=error; chunk "
                                "gives it as 95 clips, truncate keeps its first 1 s)") in named[0], err
    assert "short.wav" not in err  # only the file over the window
    assert not (tmp_path / "run").exists()  # a run stopped by a user error leaves no folder


def test_error_stops_evaluation_before_the_model_loads_naming_the_file(tmp_path, monkeypatch, capsys):
    import audiothink.evaluate as entry

    meta, long, item_id = _mmau(tmp_path, 95.0)
    monkeypatch.setattr(entry, "load_model", lambda cfg: (_ for _ in ()).throw(ModelLoaded()))
    code = _cli(entry, "evaluate", ["benchmark=mmau_test_mini", f"benchmark.meta={meta}", "data.long_audio=error",
                                    f"hydra.run.dir={tmp_path / 'out'}", "eval.progress=false"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert err.startswith("error: 1 item(s) of mmau_test_mini have unusable audio")
    named = [line for line in err.splitlines() if str(long) in line]
    assert len(named) == 1 and f"(id={item_id}): 95 s, longer than the model's audio window of 1 s" in named[0], err


def test_a_wrong_value_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    import audiothink.evaluate as entry

    monkeypatch.setattr(entry, "load_bench", lambda b: pytest.fail("the benchmark loaded before the config check"))
    code = _cli(entry, "evaluate", ["data.long_audio=split", f"hydra.run.dir={tmp_path / 'out'}"], monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: data.long_audio='split': must be chunk (split into window-long clips of the same prompt), truncate "
        "(cut to the window, counted) or error (stop before the model loads)"]


def test_the_held_out_scoring_splits_as_the_run_says(toy_model_dir, tmp_path):
    """The held-out summary of a run with data.long_audio=chunk asks what evaluation asks under chunk."""
    from hydra import compose, initialize_config_dir

    from audiothink.heldout_eval import summarise
    from audiothink.plumbing.cli import register_resolvers
    from tests.helpers import CONFIGS

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["data.long_audio=chunk", "eval.max_new_tokens=8"])
    cfg.prompt = PROMPT
    samples = [_sample(_wav(tmp_path / "long.wav", 3.02))]
    model, processor = load_toy(toy_model_dir)
    recorder = GenerateRecorder()
    model.generate = recorder
    with pytest.raises(Captured):
        summarise(model, processor, samples, cfg)
    assert recorder.ids == _eval_ids(toy_model_dir, samples, cfg.model.max_audio_seconds, "chunk").ids
    assert len(_runs(recorder.ids[0], processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>"))) == 4


def test_evaluation_scores_a_chunked_item_with_its_clips(toy_model_dir, tmp_path):
    """Through evaluation's runner: a chunked item among one-clip items is answered and its forgetting monitor
    (teacher-forced passes that take each row's clips out of the batch's) counted, no item failed."""
    from tests.helpers import run_eval, toy_lora_adapter

    meta, _, _ = _mmau(tmp_path, 3.02)
    adapter = toy_lora_adapter(toy_model_dir, tmp_path / "adapter", 0.05)
    results = run_eval(tmp_path / "out", "benchmark=mmau_test_mini", f"benchmark.meta={meta}", f"adapter={adapter}",
                       "data.long_audio=chunk", "eval.max_new_tokens=4", "eval.batch_size=4", "eval.charts=false")
    assert results["run"]["failed"] == 0 and results["run"]["predicted"] == 12
    assert results["audio"] == {"clips_clipped": 1, "unreadable": 0, "long_audio": "chunk", "window_seconds": 1.0}
    assert results["forgetting"]["tokens"] > 0
    header = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert header["_header"].get("long_audio") == "chunk"  # a folder predicted under another split is not reused
