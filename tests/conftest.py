"""Shared fixtures: the embedded toy checkpoint and a small slice of the toy data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from audiothink.toy import TOY_MODEL_DIR  # noqa: E402
from audiothink.toy.data import generate_toy  # noqa: E402

# What a launcher (torchrun, accelerate launch) sets for its processes, and what TRL's colocate vLLM set-up writes
# into this process (tests/test_vllm_rollout_engine.py's session engine keeps them until the session ends).
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launch_variables(request, monkeypatch):
    """Every test starts without a launcher's variables (a test that needs them sets them), restored after it.

    A variable left by an earlier test or the session's vLLM engine would make a test's subprocess (python -m
    audiothink.train) start as rank 0 of a one-process group on the port this process holds: EADDRINUSE. With
    pytest-xdist a worker runs another file's tests after the engine's file, so this is not an ordering accident.
    The engine's own tests keep them (its process group is this process's)."""
    if "engine" in request.fixturenames:
        return
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module", autouse=True)
def _no_launch_variables_in_module_fixtures():
    """The same for a module's fixtures (set up before any test's own): a module-scoped run of the entry point
    (tests/e2e/test_heldout_eval.py's `scored`, tests/e2e/test_export.py's runs) starts without a launcher's
    variables too, whatever file this worker ran before. The engine's module gets them back from its session
    engine, made after this."""
    with pytest.MonkeyPatch.context() as mp:
        for name in LAUNCH_VARIABLES:
            mp.delenv(name, raising=False)
        yield


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
