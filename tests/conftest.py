"""Shared fixtures: the embedded toy checkpoint and a small slice of the toy data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from audiothink.toy import TOY_MODEL_DIR  # noqa: E402
from audiothink.toy.data import generate_toy  # noqa: E402

PROMPT = "{question}\n{choices}\nThink inside <think></think> if needed, then answer inside <answer></answer>."


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, Path]:
    """A small toy set (all four tasks, one- and four-clip items), generated once per session."""
    return generate_toy(tmp_path_factory.mktemp("toy"), n_train=48, n_eval=16, seed=0)


@pytest.fixture(scope="session")
def toy_model_dir() -> Path:
    if not (TOY_MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(f"toy checkpoint missing in {TOY_MODEL_DIR}: run python -m audiothink.toy.warmstart")
    return TOY_MODEL_DIR


@pytest.fixture(scope="session")
def omni_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-Omni thinker checkpoint (config, weights, processor), built offline once per session."""
    from audiothink.toy.omni import save_tiny_omni

    return save_tiny_omni(tmp_path_factory.mktemp("omni") / "tiny-omni")


def load_toy(toy_model_dir: Path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(toy_model_dir)
    processor = AutoProcessor.from_pretrained(toy_model_dir)
    return model, processor


def toy_grpo_args(tmp_path, **overrides):
    """GRPOConfig for a few CPU steps on the toy: G = 4, 8 completions a step, short completions."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(tmp_path / "run"),
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.0,
        max_completion_length=24,
        bf16=False,
        activation_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        disable_dropout=True,
        seed=0,
    )
    return GRPOConfig(**(settings | overrides))
