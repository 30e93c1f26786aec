"""Two real processes (torchrun, gloo on CPU) train the embedded toy for 2 steps through the real entry point.

The batch-wide rewards (the adaptive think reward's λ = share of think completions, the reward total) must be
computed on the batch of *all* ranks, once per step on the main process, and reach every rank identically. tests/e2e/dist_probe.py records, per rank and
step, the rank's own rows, what the adaptive reward saw (gathered completions, λ) and the gathered rewards.

The test can fail: the same run with `DIST_PROBE_LOCAL_LAMBDA=1` (λ from the rank's own completions, the
bug a per-rank reward would have) fails it on λ differing between ranks:

    DIST_PROBE_LOCAL_LAMBDA=1 python -m pytest -q tests/e2e/test_distributed.py    # expected: 1 failed

and, within this test, rewards recomputed with each rank's local λ differ from the observed ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from audiothink.formats import parse
from audiothink.rewards.accuracy import is_correct
from audiothink.rewards.adaptive_think import adaptive_value

REPO = Path(__file__).resolve().parents[2]
STEPS = 2


def _think_share(completions: list[str]) -> float:
    return sum(parse(c).thinks for c in completions) / len(completions)


def _adaptive(call: dict, lam: float) -> list[float | None]:
    out = []
    for text, gold, options in zip(call["completions"], call["answer"], call["choices"]):
        p = parse(text)
        correct = is_correct(text, gold, options)
        # paid as a thought unless a well-formed direct answer (rewards/adaptive_think.py)
        thought = p.thinks or not p.well_formed
        out.append(None if correct is None else adaptive_value(thought, correct, lam, call["progress"]))
    return out


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               # a fresh toy cache: both ranks generate the default toy set at once on first use
               AUDIOTHINK_CACHE=str(tmp / "cache"))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.e2e.dist_probe",
        f"trainer.max_steps={STEPS}",
        # 2 prompts x G = 8 completions per rank and step: 32 completions in the gathered batch
        "trainer.per_device_train_batch_size=16",
        "trainer.logging_steps=1",
        "trainer.save_steps=1",
        "trainer.report_to=[]",
        "eval.num_samples=4",
        # no hydra.run.dir: each rank names the default runs/<launch time> itself, and must pick the same one
    ]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    run_dirs = sorted((tmp / "runs").iterdir())
    assert len(run_dirs) == 1, f"the ranks wrote {len(run_dirs)} run directories: {run_dirs}"
    run_dir = run_dirs[0]
    records = {}
    for rank in (0, 1):
        path = run_dir / f"probe-rank{rank}.jsonl"
        assert path.is_file(), f"rank {rank} wrote no probe records\n{out.stderr[-3000:]}"
        records[rank] = [json.loads(line) for line in path.read_text().splitlines()]
    return run_dir, out, records


def test_two_processes_train_and_write_one_run(two_rank_run):
    run_dir, out, records = two_rank_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["before"] and summary["after"]
    assert out.stdout.count(f"({STEPS} steps)") == 1  # the summary is printed (and written) by rank 0 only
    assert (run_dir / f"checkpoint-{STEPS}" / "rng_state_1.pth").is_file()  # the checkpoint knows both ranks
    assert (run_dir / "final" / "model.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, STEPS + 1))
    for rank in (0, 1):
        assert [r["world_size"] for r in records[rank]] == [2] * STEPS
        assert [r["step"] for r in records[rank]] == list(range(STEPS))


def test_start_up_lines_once_per_launch_and_no_ddp_noise(two_rank_run):
    """audiothink's start-up and progress lines come from the main process alone (each rank's warnings and
    errors still show); DDP is not asked to look for unused parameters the toy does not have, so no process
    warns about it."""
    _, out, _ = two_rank_run
    lines = out.stdout.splitlines()
    for start in ("data: ", "model: ", "held-out: scoring 4 items with the starting weights", "training: 2 steps of",
                  "step 1/2 ", "held-out: scoring 4 items with the trained weights"):
        shown = [ln for ln in lines if ln.startswith(start)]
        assert shown and len(shown) == len(set(shown)), (start, shown)
    assert "find_unused_parameters" not in out.stdout + out.stderr


def test_batch_wide_rewards_are_global_and_identical_on_both_ranks(two_rank_run):
    _, _, records = two_rank_run
    check_batch_wide_rewards(records, STEPS)


def check_batch_wide_rewards(records: dict[int, list[dict]], total_steps: int) -> None:
    """Every step of a 2-process run (tests/e2e/dist_probe.py records, per rank): the main process computed the
    batch-wide rewards once, on the whole gathered batch, with one global λ, and both ranks got the same reward
    matrix.
    Also used for the sharded engines (tests/e2e/test_sharded.py)."""
    assert len(records[0]) == len(records[1]) == total_steps
    local_lambda_differs = False
    for r0, r1 in zip(records[0], records[1], strict=True):
        step = r0["step"]
        assert r1["step"] == step
        # the ranks trained on different rows: a per-rank computation would see different batches
        assert set(r0["local_ids"]).isdisjoint(r1["local_ids"]), f"step {step}: ranks share prompts"
        assert r0["local_completions"] != r1["local_completions"]
        # once per step, after the gather, on the main process (its values are broadcast)
        assert len(r0["adaptive_calls"]) == 1 and r1["adaptive_calls"] == []
        c0 = r0["adaptive_calls"][0]
        gathered = r0["local_completions"] + r1["local_completions"]
        # the adaptive reward saw the whole batch, in rank order
        assert c0["completions"] == gathered
        # one global λ, the think share of the whole batch
        assert c0["lambda"] == pytest.approx(_think_share(gathered), abs=0), (
            f"step {step}: λ = {c0['lambda']}, global = {_think_share(gathered)}"
        )
        assert c0["progress"] == step / total_steps
        # the gathered reward matrix and the total TRL turns into advantages: the same on both ranks
        assert r0["rewards"] == r1["rewards"] and len(r0["rewards"]) == len(gathered)
        assert r0["total"] == r1["total"]
        # the optimised adaptive values are those of the global λ ...
        column = r0["names"].index("adaptive_think")
        observed = [row[column] for row in r0["rewards"]]
        assert observed == pytest.approx(_adaptive(c0, c0["lambda"]), abs=1e-5)
        # ... and a rank-local λ would have paid something else, which the checks above would catch
        n = len(r0["local_completions"])
        for rank, part in ((0, gathered[:n]), (1, gathered[n:])):
            local = _think_share(part)
            if local != c0["lambda"] and _adaptive(c0, local)[rank * n : (rank + 1) * n] != pytest.approx(
                observed[rank * n : (rank + 1) * n], abs=1e-5
            ):
                local_lambda_differs = True
    assert local_lambda_differs, "in this run rank-local λ equals the global one: the test cannot tell them apart"


def test_launch_time_is_the_launchers_start_under_a_launcher(monkeypatch):
    """Under torchrun / accelerate launch the run directory is named after the launcher's start, which all
    ranks of a node share (their parent process); ${now:} would split ranks started a second apart."""
    import psutil

    from audiothink.train import launch_time

    fmt = "%Y-%m-%d_%H-%M-%S.%f"
    parent_start = datetime.fromtimestamp(psutil.Process(os.getppid()).create_time()).strftime(fmt)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_time(fmt) == parent_start
    monkeypatch.setenv("WORLD_SIZE", "1")  # a plain run: the current time
    before = datetime.now().strftime(fmt)
    assert before <= launch_time(fmt) <= datetime.now().strftime(fmt)


def test_processes_with_different_run_dirs_stop(monkeypatch, tmp_path):
    from audiothink import train
    from audiothink.plumbing.errors import ConfigError

    monkeypatch.setattr("accelerate.utils.gather_object", lambda objs: [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="different run directories.*hydra.run.dir"):
        train._check_one_run_dir(tmp_path / "a")
    monkeypatch.setattr("accelerate.utils.gather_object", lambda objs: list(objs) * 2)
    train._check_one_run_dir(tmp_path / "a")  # the same directory on both ranks: fine
