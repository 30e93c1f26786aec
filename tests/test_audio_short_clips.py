"""The shortest clip each model can use, on both sides of the boundary (issue 17).

Qwen2-Audio's forward takes a batch in which no two ``<|AUDIO|>`` tokens are adjacent for unexpanded input and
fails in generate: a clip must expand to two audio tokens (961 samples at 16 kHz; 321-960 give one). The
Qwen2.5-Omni thinker has no such path: one token (321 samples) is enough, and 320 samples give none (the row
would train without audio). Training's row checks and evaluation's audio check both refuse the short side.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from audiothink.audio import SAMPLE_RATE, min_clip_samples

# model -> (the shortest clip it can use, the audio tokens that clip expands to)
BOUNDARY = {"toy": (961, 2), "omni": (321, 1)}


def _model(name, toy_model_dir, omni_dir):
    from transformers import (AutoConfig, AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration,
                              Qwen2AudioForConditionalGeneration)

    from audiothink.models import OmniAudioProcessor

    if name == "toy":
        return (Qwen2AudioForConditionalGeneration.from_pretrained(toy_model_dir),
                AutoProcessor.from_pretrained(toy_model_dir), AutoConfig.from_pretrained(toy_model_dir))
    return (Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir),
            OmniAudioProcessor.from_pretrained(omni_dir), AutoConfig.from_pretrained(omni_dir))


def _generate(model, processor, samples: int):
    """Greedy generation on a batch of two prompts, each with one clip of ``samples``: the number of audio
    tokens each clip expanded to, and the output (or the exception)."""
    import torch

    wave = (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)
    content = [{"type": "audio"}, {"type": "text", "text": "what is heard?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    batch = processor(text=[text, text], audio=[wave, wave], return_tensors="pt", padding=True,
                      sampling_rate=SAMPLE_RATE)
    tokens = int((batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())
    with torch.no_grad():
        try:
            return tokens, model.generate(**batch, max_new_tokens=2, do_sample=False)
        except Exception as e:  # noqa: BLE001  (the failure is what the test looks at)
            return tokens, e


@pytest.mark.parametrize("name", ["toy", "omni"])
def test_min_clip_samples_is_the_models_real_boundary(name, toy_model_dir, omni_dir):
    model, processor, config = _model(name, toy_model_dir, omni_dir)
    need, tokens_at_need = BOUNDARY[name]
    assert min_clip_samples(processor.feature_extractor, config.model_type, 1.0) == need

    tokens, out = _generate(model, processor, need)  # the shortest accepted clip works in a real forward pass
    assert tokens == tokens_at_need and not isinstance(out, Exception), out
    tokens, out = _generate(model, processor, need - 1)  # one sample less: the reason it is refused
    assert tokens == tokens_at_need - 1
    if name == "toy":
        assert isinstance(out, TypeError) and "not subscriptable" in str(out)  # transformers' legacy merge
    # (Omni with no audio token generates, but from the text alone)


def test_the_window_decides_too(toy_model_dir):
    """A window shorter than the shortest usable clip leaves no clip usable: None, a ConfigError in row_checks."""
    from transformers import AutoConfig, AutoProcessor

    from audiothink.plumbing.errors import ConfigError
    from audiothink.prompts import row_checks

    processor = AutoProcessor.from_pretrained(toy_model_dir)
    config = AutoConfig.from_pretrained(toy_model_dir)
    assert min_clip_samples(processor.feature_extractor, config.model_type, 961 / SAMPLE_RATE) == 961
    assert min_clip_samples(processor.feature_extractor, config.model_type, 960 / SAMPLE_RATE) is None
    with pytest.raises(ConfigError, match="model.max_audio_seconds=0.06: no clip this short"):
        row_checks(processor, "{question}", max_prompt_tokens=None, max_audio_seconds=0.06, model_config=config)


def _data(tmp_path, samples: int):
    wave = (0.1 * np.random.default_rng(1).standard_normal(samples)).astype(np.float32)
    sf.write(tmp_path / "clip.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    row = {"id": "r1", "audio": "clip.wav", "question": "what is heard?", "choices": ["a tone", "a voice"],
           "answer": "a tone"}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / "train.jsonl"


@pytest.mark.parametrize("name", ["toy", "omni"])
def test_training_rows_hold_the_boundary(name, toy_model_dir, omni_dir, tmp_path):
    """The training row check (from the processor and config.json, as train.py builds it) refuses one sample
    under the boundary, naming the file and the row, and accepts the boundary."""
    from audiothink.data import DataError, load_samples
    from audiothink.prompts import row_checks

    _, processor, config = _model(name, toy_model_dir, omni_dir)
    checks = row_checks(processor, "{question}\n{choices}", max_prompt_tokens=None, max_audio_seconds=1.0,
                        model_config=config)
    need, _ = BOUNDARY[name]
    (tmp_path / "short").mkdir()
    meta = _data(tmp_path / "short", need - 1)
    with pytest.raises(DataError) as e:
        load_samples(meta, checks=checks)
    assert f"id=r1: audio: audio {tmp_path / 'short' / 'clip.wav'}: audio too short" in str(e.value)
    assert f"the model needs at least {need} samples" in str(e.value)
    (tmp_path / "ok").mkdir()
    assert [s.id for s in load_samples(_data(tmp_path / "ok", need), checks=checks).samples] == ["r1"]


def test_evaluation_refuses_a_one_token_clip_before_the_model_loads(tmp_path, monkeypatch):
    """Evaluation checks short clips as it checks unreadable ones (eval.on_audio_error): raise names the file and
    the item, before the model loads; wrong keeps the item as a wrong answer."""
    from audiothink import evaluate as ev
    from audiothink.data import DataError
    from tests.helpers import make_mmau_fixture
    from tests.helpers import eval_cfg

    meta = make_mmau_fixture(tmp_path / "mmau")
    items = json.loads(meta.read_text())
    short = tmp_path / "mmau" / items[3]["audio_id"]
    sf.write(short, np.full(960, 0.1, np.float32), SAMPLE_RATE)
    monkeypatch.setattr(ev, "load_model", lambda cfg: pytest.fail("the model loaded before the audio check"))
    with pytest.raises(DataError) as e:
        ev.evaluate(eval_cfg([f"output_dir={tmp_path / 'out'}", "benchmark=mmau_test_mini", f"benchmark.meta={meta}"]))
    message = str(e.value)
    assert "1 item(s)" in message and f"{short.name} (id={items[3]['id']}): audio too short" in message

    cfg = eval_cfg(["output_dir=/x", "benchmark=mmau_test_mini", f"benchmark.meta={meta}"])
    bench = ev.load_bench(cfg.benchmark)
    _, unusable, _ = ev.check_audio(bench, "wrong", cfg.model.max_audio_seconds, ev.short_clip_check(cfg.model))
    assert list(unusable) == [3]
    sf.write(short, np.full(961, 0.1, np.float32), SAMPLE_RATE)
    assert ev.check_audio(bench, "raise", cfg.model.max_audio_seconds, ev.short_clip_check(cfg.model))[1] == {}
