"""Batch-wide rewards on two real processes (torchrun, gloo on CPU; tests/e2e/reward_ranks_probe.py).

A batch-wide reward is computed once per step, on the main process, and broadcast: a reward whose values differ
from process to process (a judge that samples) still gives both ranks the same advantages. An exception in it,
or in a `local` part on one rank, ends both ranks with that exception's message, within seconds of each other.
`audio/clipped_clips` and `judge/failures` are the step's totals over the ranks.

Each test fails on the old behaviour (the batch-wide reward computed on every rank, errors raised where they
happen, rank 0's clip count, TRL's per-rank mean of judge failures):

- once per step: 2 calls per step, one on each rank;
- identical values: each rank's process draws its own values;
- errors: the rank without the exception waits in the next collective and is stopped by the launcher (or by
  the lost connection) without the reward's message;
- totals: rank 0's count, and (1 + 2) / 2 = 1.5 judge failures instead of 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiothink.audio import load_audio
from tests.e2e.reward_ranks_probe import LOCAL_ERROR, MAIN_ERROR, MAX_AUDIO_SECONDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 300  # the whole launch; the error tests bound the stop itself much tighter
STOP_WITHIN_S = 30  # between the two ranks' exceptions


def _launch(out: Path, train: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.e2e.reward_ranks_probe", str(out), str(train), mode]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    return done, time.monotonic() - start


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def count_run(toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks-count")
    done, seconds = _launch(out, toy_files["train"], "count")
    return out, done, seconds


@pytest.fixture(scope="module")
def local_run(toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks-local")
    done, seconds = _launch(out, toy_files["train"], "local")
    return out, done, seconds


def _steps(out: Path) -> dict[int, dict[int, dict]]:
    """step -> rank -> that rank's record of the step (tests/e2e/reward_ranks_probe.py)."""
    by: dict[int, dict[int, dict]] = {}
    for rank in (0, 1):
        for record in _jsonl(out / f"rewards-rank{rank}.jsonl"):
            by.setdefault(record["step"], {})[rank] = record
    return by


def test_batch_wide_reward_runs_once_per_step_on_the_main_process(count_run):
    out, done, _ = count_run
    calls = _jsonl(out / "sampled-calls.jsonl")
    assert calls, f"the batch-wide reward never ran\n{done.stderr[-3000:]}"
    # steps 0 and 1 completed, step 2 raised in its one call: one call per step, by rank 0, on the whole batch
    assert [(c["step"], c["rank"]) for c in calls] == [(0, 0), (1, 0), (2, 0)], calls
    assert {c["n"] for c in calls} == {16}  # 2 ranks x 2 prompts x G = 4


def test_batch_wide_values_are_identical_on_both_ranks(count_run):
    out, done, _ = count_run
    steps = _steps(out)
    assert all(sorted(steps.get(step, {})) == [0, 1] for step in (0, 1)), done.stderr[-3000:]
    for step in (0, 1):  # the two steps that completed
        r0, r1 = steps[step][0]["rewards"], steps[step][1]["rewards"]
        assert len(r0) == 16 and r0 == r1, f"step {step}: the ranks' reward matrices differ"
        assert len({row[1] for row in r0}) == 16  # the sampled column: 16 draws, not a constant


def _stopped_together(out: Path, done: subprocess.CompletedProcess, seconds: float, message: str, kind: str):
    errors = {rank: json.loads(p.read_text()) for rank in (0, 1) if (p := out / f"error-rank{rank}.json").is_file()}
    assert done.returncode != 0
    assert sorted(errors) == [0, 1], (f"ranks that stopped with an exception: {sorted(errors)}\n"
                                      f"{done.stderr[-4000:]}")
    for rank, error in errors.items():
        assert (error["type"], error["message"]) == (kind, message), f"rank {rank}: {error}"
    assert abs(errors[0]["time"] - errors[1]["time"]) < STOP_WITHIN_S
    assert seconds < LAUNCH_TIMEOUT_S


def test_an_exception_in_the_batch_wide_reward_stops_both_ranks_with_its_message(count_run):
    out, done, seconds = count_run
    _stopped_together(out, done, seconds, MAIN_ERROR, "ValueError")


def test_an_exception_in_a_local_part_on_one_rank_stops_both_ranks_with_its_message(local_run):
    out, done, seconds = local_run
    _stopped_together(out, done, seconds, LOCAL_ERROR, "RuntimeError")
    assert "raised by reward 'sampled' on rank 1" in done.stderr  # rank 0 says where it came from


def test_clipped_clips_and_judge_failures_are_step_totals_over_the_ranks(count_run):
    out, done, _ = count_run
    logs = {r["step"]: r for r in _jsonl(out / "logs.jsonl")}
    steps = _steps(out)
    assert sorted(logs) == [1, 2], done.stderr[-3000:]
    observed, expected = [], []
    for step in (0, 1):
        ranks = steps[step]
        per_rank = [sum(load_audio(p, max_seconds=MAX_AUDIO_SECONDS)[1] for row in ranks[r]["audio"] for p in row)
                    for r in (0, 1)]
        assert per_rank[1] > 0 and per_rank[0] != per_rank[1]  # so that a total differs from rank 0's or a mean
        logged = logs[step + 1]  # rolled out at global step k for optimizer step k + 1
        observed.append((logged["audio/clipped_clips"], logged["judge/failures"]))
        # the judge fails on rank + 1 items per call, one call per rank and step: 1 + 2
        expected.append((sum(per_rank), 1 + 2))
    assert observed == expected, "(audio/clipped_clips, judge/failures) per step, logged vs the sums over the ranks"
