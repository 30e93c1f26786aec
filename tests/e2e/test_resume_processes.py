"""A checkpoint resumes only under the number of processes that saved it: another count is refused in one line.

TRL's generation batch is per_device_train_batch_size x processes x steps per generation, and each process
restores its own rank's random state: a run saved by 1 process and resumed by `accelerate launch
--num_processes 2` samples twice the prompts per step from another sampler order, a different run (before the
check it trained on with exit 0 and no word about it). Both directions, on real checkpoints of real runs:

- a 1-process run's checkpoint, resumed by a 2-process DDP launch (CPU, gloo);
- a 2-process FSDP2 run's sharded checkpoint, resumed without a launcher (in tests/e2e/test_sharded.py, on the
  FSDP2 LoRA run made there: one 2-process launch fewer).

Each resume must stop with exit 2 (each process; a launcher then reports its failed child) and one `error:` line
naming both counts, before the model loads and without writing into the run folder. Breaking it on purpose (the check_resume_processes call in
audiothink/train.py removed) makes both tests fail: the resumes train a step and exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import toy_cache

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "trainer.max_steps=1", "trainer.save_steps=1", "trainer.logging_steps=1",
    "trainer.per_device_train_batch_size=16", "trainer.max_completion_length=8", "trainer.report_to=[]",
    "eval.num_samples=0", "log.plots=false",
]


def _env(cache: Path) -> dict:
    # what a launcher exports, and nothing earlier in-process runs left behind (ACCELERATE_USE_CPU and the like)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_", "DS_"))}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", AUDIOTHINK_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _train(run_dir: Path, cache: Path, *overrides: str, processes: int = 1, engine: str = "ddp.yaml"):
    launcher = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / engine),
        "--num_processes", str(processes), "--main_process_port", "0"]
    cmd = [sys.executable, *launcher, "-m", "audiothink.train", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=run_dir.parent, env=_env(cache), capture_output=True, text=True, timeout=900)


def _refused(out: subprocess.CompletedProcess, run_dir: Path, before: set[str], saved: str, now: str, *,
             launcher: bool = False) -> None:
    if launcher:  # the processes exit 2; the launcher reports a failed child (exit 1) in its own words
        assert out.returncode != 0 and "(exitcode: 2)" in out.stderr, f"exit {out.returncode}\n{out.stderr[-4000:]}"
    else:
        assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    errors = sorted({line for line in out.stderr.splitlines() if line.startswith("error: ")})
    assert len(errors) == 1, out.stderr[-4000:]  # every process prints the same line
    assert f"saved by {saved}, and this launch has {now}" in errors[0], errors[0]
    assert "model:" not in out.stdout and "resume: loaded" not in out.stdout  # stopped before the model loaded
    assert _files(run_dir) == before, "the refused resume wrote into the run folder"


def _files(run_dir: Path) -> set[str]:
    """Every path in the run folder (hydra's .hydra/ records included), relative to it."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return toy_cache(tmp_path_factory.mktemp("toy-cache"))  # the default toy set, linked in


def test_a_one_process_checkpoint_is_refused_by_a_two_process_launch(tmp_path, cache):
    run = tmp_path / "run"
    first = _train(run, cache, *COMMON)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (run / "checkpoint-1" / "rng_state.pth").is_file()  # what the count is read from
    before = _files(run)
    out = _train(run, cache, "resume=true", "trainer.max_steps=2", processes=2)
    _refused(out, run, before, "1 process", "2 processes", launcher=True)
