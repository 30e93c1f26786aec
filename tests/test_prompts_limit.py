"""data.max_prompt_tokens is tied to the model's context (issue 17): rows are held to
min(data.max_prompt_tokens, max_position_embeddings of the text config - trainer.max_completion_length), read
from config.json before any weights load. The toy's context is 1024 positions, so the default 2048 alone let a
1,436-token prompt through (transformers then warns of "indexing errors")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from audiothink.audio import SAMPLE_RATE
from audiothink.data import DataError, load_samples
from audiothink.plumbing.errors import ConfigError
from audiothink.toy import TOY_MODEL_DIR
from audiothink.loading import model_context
from audiothink.prompts import prompt_limit, row_checks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPT = "{question}\n{choices}"


def _rows(d: Path, words: int) -> Path:
    sf.write(d / "clip.wav", np.full(SAMPLE_RATE, 0.1, np.float32), SAMPLE_RATE)
    row = {"id": "long", "audio": "clip.wav", "question": "why " * words, "choices": ["a tone", "a voice"],
           "answer": "a tone"}
    (d / "train.jsonl").write_text(json.dumps(row) + "\n")
    return d / "train.jsonl"


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoConfig, AutoProcessor

    return AutoProcessor.from_pretrained(TOY_MODEL_DIR), AutoConfig.from_pretrained(TOY_MODEL_DIR)


def test_the_limit_is_the_context_less_the_completion(toy, tmp_path):
    processor, config = toy
    assert model_context(config) == 1024
    checks = row_checks(processor, PROMPT, max_prompt_tokens=2048, max_audio_seconds=1.0, model_config=config,
                        max_completion_length=48)
    assert checks.max_prompt_tokens == 976
    meta = _rows(tmp_path, 470)  # about 1,430 tokens: under the setting, over the context
    with pytest.raises(DataError, match=r"id=long: question: the prompt is 1[34]\d\d tokens \(text and audio\), over "
                                        r"976 tokens \(the model's context of 1024 tokens less "
                                        r"trainer.max_completion_length=48, below data.max_prompt_tokens=2048\)"):
        load_samples(meta, checks=checks)
    # a setting inside the context stays the limit, and its message names it
    checks = row_checks(processor, PROMPT, max_prompt_tokens=500, max_audio_seconds=1.0, model_config=config,
                        max_completion_length=48)
    assert checks.max_prompt_tokens == 500
    with pytest.raises(DataError, match=r"over data.max_prompt_tokens=500$"):
        load_samples(meta, checks=checks)
    # null (no limit of its own) still meets the context
    assert prompt_limit(None, config, 48)[0] == 976


def test_a_completion_that_fills_the_context_is_a_config_error(toy):
    _, config = toy
    with pytest.raises(ConfigError, match=r"trainer.max_completion_length=1024 leaves no room for a prompt in the "
                                          r"model's context of 1024 tokens"):
        prompt_limit(2048, config, 1024)


def test_the_context_of_the_omni_thinker_and_the_full_omni_checkpoint(omni_dir):
    from transformers import AutoConfig, Qwen2_5OmniConfig

    assert model_context(AutoConfig.from_pretrained(omni_dir)) == 2048  # the tiny thinker's text config
    full = Qwen2_5OmniConfig()  # the 7B checkpoint's config.json nests it under thinker_config.text_config
    full.thinker_config.text_config.max_position_embeddings = 4096
    assert model_context(full) == 4096


def test_training_refuses_the_long_prompt_before_the_model_loads(tmp_path, monkeypatch):
    """Through train(): the row problem comes from config.json and the processor, no weights loaded."""
    import audiothink.train as train_mod

    from audiothink.plumbing.cli import register_resolvers

    register_resolvers()
    meta = _rows(tmp_path, 470)
    monkeypatch.setattr(train_mod, "load_model_and_processor",
                        lambda *a, **k: pytest.fail("the model loaded before the row checks"))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["data=jsonl", f"data.train={meta}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match=r"over 976 tokens \(the model's context of 1024 tokens"):
        train_mod.train(cfg)
