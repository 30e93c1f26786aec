"""The Qwen3-Omni configs through the entry points: model=qwen3_omni_tiny trains and its result is evaluated on the
toy benchmark; model=qwen3_omni_30b_a3b composes, and without a local checkpoint stops at once in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_tiny_thinker_trains_and_its_result_is_evaluated_on_the_toy_benchmark(tmp_path):
    run = tmp_path / "run"
    train = _run("audiothink.train", "model=qwen3_omni_tiny", "trainer.max_steps=2",
                 "trainer.per_device_train_batch_size=16", "trainer.max_completion_length=16", "trainer.logging_steps=1",
                 "eval.num_samples=8",
                 "log.plots=false", f"hydra.run.dir={run}")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Qwen3OmniMoeThinkerForConditionalGeneration" in train.stdout + train.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["after"]["overall"]["n"] == 8
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert not any("aux_loss" in m for m in metrics)  # the router's loss is off (model.router_aux_loss_coef=0.0)
    final = run / "final"
    assert (final / "model.safetensors").is_file()
    assert "Qwen3OmniAudioProcessor" in (final / "processor_config.json").read_text()

    out = tmp_path / "eval"
    evaluate = _run("audiothink.evaluate", "benchmark=toy", "model=qwen3_omni_tiny", f"model.path={final}",
                    "eval.max_new_tokens=8", "eval.limit=8", "eval.charts=false", f"hydra.run.dir={out}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "over 8 samples" in evaluate.stdout


def test_the_30b_config_composes_and_stops_at_once_without_a_local_checkpoint():
    job = _run("audiothink.train", "model=qwen3_omni_30b_a3b", "--cfg", "job", timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    for line in ("cls: transformers.Qwen3OmniMoeThinkerForConditionalGeneration",
                 "processor: audiothink.models.Qwen3OmniAudioProcessor", "router_aux_loss_coef: 0.0",
                 "path: Qwen/Qwen3-Omni-30B-A3B-Instruct", "num_generations: 8"):
        assert line in job.stdout, line
    start = time.monotonic()
    missing = _run("audiothink.train", "model=qwen3_omni_30b_a3b", timeout=120)
    took = time.monotonic() - start
    assert missing.returncode == 2, missing.stderr[-3000:]
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.path='Qwen/Qwen3-Omni-30B-A3B-Instruct'"), lines
    assert took < 60, f"{took:.0f} s"  # before any data or weights: the interpreter's start-up, mostly
