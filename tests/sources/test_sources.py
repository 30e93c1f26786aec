"""Training data readers (AVQA, Hugging Face on disk / parquet), field mapping, abstention, build_dataset."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from audiothink.audio import SAMPLE_RATE, audio_info, load_audio, write_wav
from audiothink.data import DataError, Sample
from audiothink.sources.abstain import DEFAULT_LABEL, add_abstention
from audiothink.sources.avqa import load_avqa
from audiothink.sources.hf import load_hf
from audiothink.sources.mapping import FieldMap, RowMapping, map_row
from tests.helpers import audio_dataset, data_cfg, hf_rows, wav_bytes

# --------------------------------------------------------------------------- AVQA

R1AQA_ROW = {
    "id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341, "question_text": "What happened in the video?",
    "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"], "answer": 1,
    "question_relation": "View", "question_type": "Happening", "dataset_name": "AVQA",
    "audio_path": "/home/someone/avqa/wavs/-HG3Omg_89c_30.wav",
}


@pytest.fixture
def avqa(tmp_path) -> Path:
    write_wav(tmp_path / "audio" / "-HG3Omg_89c_30.wav", np.full(1600, 0.1, np.float32))
    write_wav(tmp_path / "audio" / "abc_7.wav", np.full(1600, 0.1, np.float32))
    second = {**R1AQA_ROW, "id": 184, "video_name": "abc_000007", "question_text": "Why is the video loud? Video!",
              "audio_path": "C:\\data\\abc_7.wav", "answer": 3}
    (tmp_path / "train_qa.data").write_text(json.dumps(R1AQA_ROW) + "\n" + json.dumps(second) + "\n")
    return tmp_path


def test_avqa_r1aqa_lines(avqa):
    result = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio")
    first, second = result.samples
    assert first == Sample(
        id="183", audio=(str(avqa / "audio" / "-HG3Omg_89c_30.wav"),), question="What happened in the audio?",
        choices=tuple(R1AQA_ROW["multi_choice"]), answer="Yacht consignment", task="Happening", category="View",
        source="AVQA",
    )
    assert first.extra == {"video_name": "-HG3Omg_89c_000030", "video_id": 341}
    # plain, case-sensitive replacement as R1-AQA does it; the Windows path is reduced to its name too
    assert second.question == "Why is the audio loud? Video!" and second.answer == "Consignment car"
    assert second.audio == (str(avqa / "audio" / "abc_7.wav"),)
    assert result.counts["questions_rewritten"] == 2


def test_avqa_rewrite_switches_off_and_is_configurable(avqa):
    off = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio", question_rewrite=None)
    assert off.samples[0].question == "What happened in the video?" and off.counts["questions_rewritten"] == 0
    both = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio",
                     question_rewrite={"video": "audio", "Video": "Audio"})
    assert both.samples[1].question == "Why is the audio loud? Audio!"


def test_avqa_original_annotations_need_a_template(avqa):
    original = {k: v for k, v in R1AQA_ROW.items() if k not in ("audio_path", "dataset_name")}
    meta = avqa / "train_qa.json"
    meta.write_text(json.dumps([original]))
    with pytest.raises(DataError, match=r"train_qa.json:0 id=183: audio_path: missing .*audio_template"):
        load_avqa(meta, audio_root=avqa / "audio")
    (s,) = load_avqa(meta, audio_root=avqa / "audio", audio_template="{ytid}_{start}.wav").samples
    assert s.audio == (str(avqa / "audio" / "-HG3Omg_89c_30.wav"),) and s.source == "avqa"
    with pytest.raises(DataError, match=r"audio: audio_template '\{clip\}.wav' needs field 'clip'"):
        load_avqa(meta, audio_root=avqa / "audio", audio_template="{clip}.wav")


def test_avqa_json_lines_named_json_and_full_paths(avqa):
    meta = avqa / "train_r1aqa_line.json"  # R1-AQA-style lines under a .json name
    row = {**R1AQA_ROW, "audio_path": str(avqa / "audio" / "-HG3Omg_89c_30.wav")}
    meta.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": 2}) + "\n")
    result = load_avqa(meta, audio_basename=False)
    assert [s.id for s in result.samples] == ["183", "2"]
    assert result.samples[0].audio == (row["audio_path"],)


def test_avqa_messages_use_avqa_field_names(avqa):
    meta = avqa / "bad.jsonl"
    meta.write_text(json.dumps({**R1AQA_ROW, "answer": True}) + "\n" + json.dumps({**R1AQA_ROW, "id": "x", "answer": "2"}))
    message = str(pytest.raises(DataError, load_avqa, meta, audio_root=avqa / "audio").value)
    assert "id=183: answer: expected a string, got bool" in message
    assert "id=x: answer: '2' is not one of the choices" in message  # auto: a string is choice text
    (s,) = load_avqa(meta, audio_root=avqa / "audio", answer_format="index", on_error="skip").samples
    assert s.answer == "Sailboat set sail"


# --------------------------------------------------------------------------- mapping


def test_field_map_from_config():
    fm = FieldMap.from_config({"question": "prompt_text", "task": None})
    assert (fm.question, fm.task, fm.id) == ("prompt_text", None, "id")
    with pytest.raises(ValueError, match="unknown schema field"):
        FieldMap.from_config({"questions": "q"})
    with pytest.raises(ValueError, match="data.fields.answer"):
        FieldMap.from_config({"answer": None})
    with pytest.raises(ValueError, match="answer_format"):
        RowMapping(answer_format="letter")


def test_map_row_keeps_extras_and_drops_unmapped_schema_names():
    fm = FieldMap(question="q", task=None)
    row, problems, _ = map_row({"id": 5, "audio": "a.wav", "q": "hi", "question": "stale", "task": "t",
                                "choices": ["x", "y"], "answer": 0, "category": ["music"], "note": 1},
                               RowMapping(fields=fm))
    assert problems == []
    assert row == {"id": "5", "audio": "a.wav", "question": "hi", "choices": ["x", "y"], "answer": "x",
                   "category": "music", "note": 1}


# --------------------------------------------------------------------------- Hugging Face


def test_hf_dataset_dict_on_disk(tmp_path, caplog):
    import datasets

    datasets.DatasetDict({"train": audio_dataset(hf_rows(3)), "test": audio_dataset(hf_rows(1))}).save_to_disk(
        str(tmp_path / "ds"))
    with caplog.at_level(logging.INFO, logger="audiothink.sources.hf"):
        result = load_hf(tmp_path / "ds", split="train", cache_dir=tmp_path / "cache",
                         question_rewrite={"video": "audio"})
    assert [s.id for s in result.samples] == ["r0", "r1", "r2"]
    assert [s.answer for s in result.samples] == ["rain", "wind", "rain"]  # integer answers are indices
    assert result.samples[0].question == "which sound is in the audio?"
    for i, s in enumerate(result.samples):
        assert Path(s.audio[0]).is_relative_to(tmp_path / "cache")
        assert audio_info(s.audio[0])[0] == pytest.approx(0.1 * (i + 1))
    assert result.counts == {"questions_rewritten": 3, "audio_files_written": 3, "audio_files_reused": 0}
    assert "3 in-memory clips" in caplog.text and "3 written now, 0 reused" in caplog.text

    again = load_hf(tmp_path / "ds", split="train", cache_dir=tmp_path / "cache")
    assert again.counts["audio_files_written"] == 0 and again.counts["audio_files_reused"] == 3
    assert [s.audio for s in again.samples] == [s.audio for s in result.samples]
    assert [s.id for s in load_hf(tmp_path / "ds", split="test", cache_dir=tmp_path / "cache").samples] == ["r0"]
    with pytest.raises(DataError, match=r"no split 'dev'; the splits are \['test', 'train'\]"):
        load_hf(tmp_path / "ds", split="dev", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="choose one"):
        load_hf(tmp_path / "ds", cache_dir=tmp_path / "cache")


def test_hf_multi_audio_rows_and_parquet_splits(tmp_path):
    rows = [{**r, "audio": [r["audio"], {"bytes": wav_bytes(0.5), "path": "second.flac"}]} for r in hf_rows(2)]
    ds = audio_dataset(rows, multi=True)
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    audio_dataset(hf_rows(1)).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    result = load_hf(tmp_path, split="train", cache_dir=tmp_path / "cache")
    assert [len(s.audio) for s in result.samples] == [2, 2]
    assert all(p.endswith(".wav") for s in result.samples for p in s.audio)  # named by content, not by "path"
    assert audio_info(result.samples[1].audio[1])[0] == pytest.approx(0.5)
    assert len(load_hf(tmp_path, split="test", cache_dir=tmp_path / "cache").samples) == 1
    # a folder holding only a train file does not serve it as the test split
    only = tmp_path / "only"
    only.mkdir()
    os.replace(tmp_path / "data" / "train-00000-of-00001.parquet", only / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="no parquet file names split 'test'"):
        load_hf(only, split="test", cache_dir=tmp_path / "cache")
    assert len(load_hf(only, split="train", cache_dir=tmp_path / "cache").samples) == 2


def test_hf_decoded_arrays_and_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_wav(tmp_path / "clips" / "p.wav", np.full(800, 0.2, np.float32))
    t = np.arange(4800) / 48_000
    stereo = [(0.4 * np.sin(2 * np.pi * 440 * t)).tolist(), (0.2 * np.sin(2 * np.pi * 440 * t)).tolist()]
    rows = [
        {"id": 1, "audio": {"array": [[0.25] * 800], "sampling_rate": 8000}, "answer": "b"},  # 8 kHz, 1 channel
        {"id": 2, "audio": {"array": stereo, "sampling_rate": 48_000}, "answer": "a"},  # (channels, samples)
    ]
    common = {"question": "q", "choices": ["a", "b"]}
    pq.write_table(pa.Table.from_pylist([{**r, **common} for r in rows]), tmp_path / "arrays.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": 3, "audio": "clips/p.wav", "answer": "a", **common}]),
                   tmp_path / "paths.parquet")

    a, b = load_hf(tmp_path / "arrays.parquet", cache_dir=tmp_path / "cache").samples
    assert (a.id, b.id) == ("1", "2")
    wave, _ = load_audio(a.audio[0])
    assert wave.shape == (1600,) and wave[100:-100] == pytest.approx(0.25, abs=1e-3)  # 8 kHz -> 16 kHz
    wave, _ = load_audio(b.audio[0])
    assert wave.shape == (1600,) and np.abs(wave).max() == pytest.approx(0.3, abs=0.01)  # mono mean of 0.4, 0.2
    (c,) = load_hf(tmp_path / "paths.parquet", cache_dir=tmp_path / "cache").samples
    assert c.audio == (str(tmp_path / "clips" / "p.wav"),)  # relative to the dataset's folder


def test_hf_custom_field_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_wav(tmp_path / "x.wav", np.full(800, 0.2, np.float32))
    pq.write_table(pa.Table.from_pylist([{"uid": "u1", "wav": "x.wav", "prompt": "q", "options": ["a", "b"],
                                          "label": 1, "domain": "music"}]), tmp_path / "t.parquet")
    fields = FieldMap.from_config({"id": "uid", "audio": "wav", "question": "prompt", "choices": "options",
                                   "answer": "label", "task": "domain"})
    (s,) = load_hf(tmp_path / "t.parquet", cache_dir=tmp_path / "c", fields=fields).samples
    assert (s.id, s.answer, s.task, s.choices) == ("u1", "b", "music", ("a", "b"))
    wrong = FieldMap.from_config({"id": "uid", "audio": "wav", "question": "prompt", "answer": "label",
                                  "choices": "opts"})
    with pytest.raises(DataError) as info:
        load_hf(tmp_path / "t.parquet", cache_dir=tmp_path / "c", fields=wrong)
    assert str(info.value).splitlines()[1:] == [
        f"{tmp_path / 't.parquet'}:0 id=u1: label: index 1 cannot be resolved: opts is not a list",
        f"{tmp_path / 't.parquet'}:0 id=u1: opts: missing",
    ]


# --------------------------------------------------------------------------- abstention


def _samples(tmp_path, n: int = 20) -> list[Sample]:
    out = []
    for i in range(n):
        clips = [tmp_path / f"c{i}-{k}.wav" for k in range(1 + (i % 3 == 0))]
        for k, clip in enumerate(clips):
            write_wav(clip, np.full(int(0.1 * (i + 1 + k) * SAMPLE_RATE), 0.3, np.float32))
        out.append(Sample(id=f"s{i}", audio=tuple(map(str, clips)), question="q?", choices=("a", "b", "c"),
                          answer="b", task="t"))
    return out


def test_abstention_picks_exact_share_deterministically(tmp_path):
    samples = _samples(tmp_path)
    out, n = add_abstention(samples, share=0.25, seed=3, cache_dir=tmp_path / "noise")
    assert n == 5
    picked = [s for s in out if s.extra.get("abstain")]
    assert len(picked) == 5 and all(s.answer == DEFAULT_LABEL for s in picked)
    # the label is a choice of every item, so its presence gives nothing away; real items keep their answer
    assert all(s.choices == ("a", "b", "c", DEFAULT_LABEL) for s in out)
    assert all(s.answer == "b" for s in out if not s.extra.get("abstain"))
    # same seed: same items and noise, whatever the order; another seed: other items
    again, _ = add_abstention(list(reversed(samples)), share=0.25, seed=3, cache_dir=tmp_path / "noise2")
    assert {s.id for s in again if s.extra.get("abstain")} == {s.id for s in picked}
    first = next(s for s in picked)
    twin = next(s for s in again if s.id == first.id)
    np.testing.assert_array_equal(load_audio(first.audio[0])[0], load_audio(twin.audio[0])[0])
    other, _ = add_abstention(samples, share=0.25, seed=4, cache_dir=tmp_path / "noise")
    assert {s.id for s in other if s.extra.get("abstain")} != {s.id for s in picked}


def test_abstention_noise_replaces_every_clip_at_its_length(tmp_path):
    samples = _samples(tmp_path)
    out, _ = add_abstention(samples, share=1.0, seed=0, cache_dir=tmp_path / "noise", max_seconds=1.0)
    for before, after in zip(samples, out):
        assert after.extra["original_audio"] == list(before.audio) and after.extra["original_answer"] == "b"
        assert len(after.audio) == len(before.audio)
        for old, new in zip(before.audio, after.audio):
            assert audio_info(new)[0] == pytest.approx(min(audio_info(old)[0], 1.0), abs=1e-3)
            wave, _ = load_audio(new)
            assert 0.005 < float(np.sqrt(np.mean(wave**2))) < 0.12  # noise, not the 0.3 tone
            assert abs(float(wave.mean())) < 0.05


def test_abstention_off_and_bad_settings(tmp_path):
    samples = _samples(tmp_path, 4)
    assert add_abstention(samples, share=0.0, seed=0, cache_dir=tmp_path) == (samples, 0)
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\]"):
        add_abstention(samples, share=1.5, seed=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="noise_rms"):
        add_abstention(samples, share=0.5, seed=0, cache_dir=tmp_path, noise_rms=(0.2, 0.1))
    labelled = [Sample(id="x", audio=samples[0].audio, question="q", choices=("a", "unknown"), answer="a")]
    (s,), n = add_abstention(labelled, share=1.0, seed=0, cache_dir=tmp_path, label="unknown")
    assert n == 1 and s.choices == ("a", "unknown") and s.answer == "unknown"  # an existing choice is reused
    crowded = [Sample(id="y", audio=samples[0].audio, question="q", choices=tuple("abcdefghijklmnopqrstuvwxyz"),
                      answer="a")]
    with pytest.raises(DataError, match="no room for the abstention choice"):
        add_abstention(crowded, share=0.5, seed=0, cache_dir=tmp_path)


def test_accuracy_reward_scores_the_abstention_target_like_any_choice(tmp_path):
    from audiothink.rewards.accuracy import is_correct

    choices = ["rain", "wind", "thunder", DEFAULT_LABEL]
    for said in (f"<answer>{DEFAULT_LABEL}</answer>", "<answer>(D) cannot be determined from the audio</answer>",
                 "<think>only noise</think><answer>It cannot be determined from the audio.</answer>"):
        assert is_correct(said, DEFAULT_LABEL, choices) is True, said
    for said in ("<answer>(D)</answer>", "<answer>D</answer>"):  # letters: right only when opted in
        assert is_correct(said, DEFAULT_LABEL, choices) is False, said
        assert is_correct(said, DEFAULT_LABEL, choices, letters=True) is True, said
    assert is_correct("<answer>wind</answer>", DEFAULT_LABEL, choices) is False
    assert is_correct(f"<answer>{DEFAULT_LABEL}</answer>", "wind", choices) is False  # abstaining on real audio


# --------------------------------------------------------------------------- build_dataset


def test_build_dataset_avqa_with_skips_clipping_and_abstention(tmp_path, caplog):
    from audiothink.sources import build_dataset

    audio = tmp_path / "audio"
    write_wav(audio / "long_1.wav", np.full(int(3.0 * SAMPLE_RATE), 0.1, np.float32))
    write_wav(audio / "short_2.wav", np.full(int(0.5 * SAMPLE_RATE), 0.1, np.float32))
    rows = [{**R1AQA_ROW, "id": 1, "audio_path": "/x/long_1.wav"},
            {**R1AQA_ROW, "id": 2, "audio_path": "/x/short_2.wav"},
            {**R1AQA_ROW, "id": 3, "audio_path": "/x/dead_3.wav"}]  # a dead source video: no audio
    (tmp_path / "train_qa.data").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = data_cfg("avqa", root=str(tmp_path), on_error="skip", **{"abstain.share": 0.5, "abstain.seed": 1,
                                                                    "abstain.cache_dir": str(tmp_path / "n")})
    with caplog.at_level(logging.INFO, logger="audiothink"):
        train, held_out = build_dataset(cfg, prompt="{question}\n{choices}", max_audio_seconds=2.0)
    assert held_out == [] and sorted(train["id"]) == ["1", "2"]
    assert all(c[-1] == DEFAULT_LABEL for c in train["choices"])
    assert train["answer"].count(DEFAULT_LABEL) == 1
    assert "What happened in the audio?" in train["prompt"][0]
    text = caplog.text
    assert "train: 2 of 3 rows usable (1 skipped, data.on_error=skip)" in text
    assert "skipped 1 of 3 row(s)" in text and "(1 x audio_path)" in text
    assert "1 clips are longer than 2.0 s and are clipped" in text
    assert "question_rewrite changed 3 questions" in text
    assert "abstention: 1 of 2 training items" in text

    cfg = data_cfg("avqa", root=str(tmp_path))
    with pytest.raises(DataError, match=r"train_qa.data:3 id=3: audio_path: audio .*dead_3.wav: file not found"):
        build_dataset(cfg, prompt="{question}{choices}", max_audio_seconds=2.0)


def test_build_dataset_hf_and_config_errors(tmp_path):
    from audiothink.plumbing.errors import ConfigError
    from audiothink.sources import build_dataset

    audio_dataset(hf_rows(2)).save_to_disk(str(tmp_path / "ds"))
    cfg = data_cfg("hf", train=str(tmp_path / "ds"), eval=str(tmp_path / "ds"), cache_dir=str(tmp_path / "c"))
    train, held_out = build_dataset(cfg, prompt="{question} {choices}", max_audio_seconds=None)
    assert train["id"] == ["r0", "r1"] and [s.id for s in held_out] == ["r0", "r1"]
    assert all(os.path.isfile(p) for paths in train["audio"] for p in paths)

    OmegaConf.set_struct(cfg, False)
    cfg.fields.questions = "q"
    with pytest.raises(ConfigError, match="unknown schema field"):
        build_dataset(cfg, prompt="{question}", max_audio_seconds=None)
    cfg = data_cfg("hf", train=str(tmp_path / "ds"), format="parquet")
    with pytest.raises(ConfigError, match="data.format must be one of"):
        build_dataset(cfg, prompt="{question}", max_audio_seconds=None)


def test_question_rewrite_can_be_switched_off_from_the_command_line():
    assert data_cfg("avqa").question_rewrite == {"video": "audio"}
    assert data_cfg("avqa", question_rewrite="null").question_rewrite is None
