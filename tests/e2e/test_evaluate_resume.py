"""Kill an evaluation midway and rerun it: the same final numbers, and nothing finished is predicted again
(a counter on the model's generate() proves it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import Qwen2AudioForConditionalGeneration

from audiothink.benchmarks.store import StoreMismatch
from tests.helpers import run_eval

N, BATCH = 40, 8  # five batches of the toy's held-out items


@pytest.fixture
def toy_args(toy_files):
    return ["benchmark=toy", f"benchmark.root={toy_files['eval'].parent}", "benchmark.generate_toy=false",
            f"eval.limit={N}", f"eval.batch_size={BATCH}", "eval.charts=false"]


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    from audiothink.toy.data import generate_toy

    return generate_toy(tmp_path_factory.mktemp("toy40"), n_train=4, n_eval=N, seed=0)


class Counter:
    """Wraps generate(): counts calls and rows; raises KeyboardInterrupt (a Ctrl-C) on call `stop_at`."""

    def __init__(self, monkeypatch, stop_at=None):
        self.calls, self.rows, self.stop_at = 0, 0, stop_at
        original = Qwen2AudioForConditionalGeneration.generate

        def generate(model, *args, **kwargs):
            self.calls += 1
            if self.stop_at is not None and self.calls == self.stop_at:
                raise KeyboardInterrupt
            self.rows += kwargs["input_ids"].shape[0]
            return original(model, *args, **kwargs)

        monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "generate", generate)


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()[1:]]


def _numbers(r):
    return r["summary"], r["lines"]


def test_interrupt_and_resume(tmp_path, toy_args, monkeypatch):
    full = Counter(monkeypatch)
    reference = run_eval(tmp_path / "ref", *toy_args)
    assert (full.calls, full.rows) == (N // BATCH, N)

    out = tmp_path / "run"
    Counter(monkeypatch, stop_at=3)  # two batches finish, the third is interrupted
    with pytest.raises(KeyboardInterrupt):
        run_eval(out, *toy_args)
    done = _records(out / "predictions.jsonl")
    assert len(done) == 2 * BATCH  # every finished batch is on disk, nothing of the interrupted one

    rerun = Counter(monkeypatch)
    resumed = run_eval(out, *toy_args)
    assert (rerun.calls, rerun.rows) == (3, N - 2 * BATCH)  # finished ids are not predicted again
    assert resumed["run"]["resumed"] == 2 * BATCH and resumed["run"]["predicted"] == N - 2 * BATCH
    assert _numbers(resumed) == _numbers(reference)
    by_key = {r["key"]: r["output"] for r in _records(tmp_path / "ref" / "predictions.jsonl")}
    assert {r["key"]: r["output"] for r in _records(out / "predictions.jsonl")} == by_key

    again = Counter(monkeypatch)
    run_eval(out, *toy_args)  # a third run has nothing left to do
    assert again.calls == 0

    with pytest.raises(StoreMismatch, match="max_new_tokens"):
        run_eval(out, *toy_args, "eval.max_new_tokens=20")


def test_killed_process_resumes(tmp_path, toy_args, monkeypatch):
    """SIGKILL a real `python -m audiothink.evaluate` once a batch is on disk, then rerun it."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "audiothink.evaluate", *toy_args, "eval.batch_size=4", f"hydra.run.dir={out}",
           "eval.progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    preds = out / "predictions.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if preds.exists() and len(preds.read_text().splitlines()) > 1 + 4:  # header + at least one batch
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {r["key"] for r in _records(preds)}
    assert 4 <= len(finished) < N, "the kill should land mid-run"

    counter = Counter(monkeypatch)
    r = run_eval(out, *toy_args, "eval.batch_size=4")
    assert counter.rows == N - len(finished)
    assert r["run"]["resumed"] == len(finished) and r["summary"]["overall"]["n"] == N


def test_failing_batches_fall_back_to_items_and_failures_stop_the_run(tmp_path, toy_args, monkeypatch):
    from audiothink.benchmarks.runner import EvaluationAborted

    reference = run_eval(tmp_path / "ref", *toy_args)
    original = Qwen2AudioForConditionalGeneration.generate

    def batch_fails(model, *args, **kwargs):  # e.g. out of memory for a whole batch, fine item by item
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("simulated out of memory")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "generate", batch_fails)
    r = run_eval(tmp_path / "fallback", *toy_args)
    assert r["summary"]["overall"]["failures"] == 0 and r["run"]["model_calls"] == N + N // BATCH
    assert r["summary"]["overall"]["accuracy"] == pytest.approx(reference["summary"]["overall"]["accuracy"], abs=0.05)

    def always_fails(model, *args, **kwargs):
        raise RuntimeError("simulated broken model")

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "generate", always_fails)
    with pytest.raises(EvaluationAborted, match="simulated broken model"):
        run_eval(tmp_path / "broken", *toy_args, "eval.max_failures=3")
    recs = _records(tmp_path / "broken" / "predictions.jsonl")
    assert recs and all(r["prediction"] == "" and "simulated broken model" in r["error"] for r in recs)
