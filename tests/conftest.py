"""Shared fixtures: the embedded toy checkpoint and a small slice of the toy data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from audiothink.toy import TOY_MODEL_DIR  # noqa: E402
from audiothink.toy.data import generate_toy  # noqa: E402

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


@pytest.fixture(scope="session")
def qwen3_omni_dir(tmp_path_factory) -> Path:
    """A tiny Qwen3-Omni thinker checkpoint (mixture of experts; config, weights, processor), built offline once
    per session."""
    from audiothink.toy.qwen3_omni import save_tiny_qwen3_omni

    return save_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3-omni") / "tiny-qwen3-omni")
