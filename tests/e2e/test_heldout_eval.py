"""Held-out scoring during training (eval.every_steps), end to end: heldout/* curves, best/, once per interval on
2 processes. The config checks, the sharding and the plot: tests/test_heldout_eval.py.

The runs are the real entry point (`python -m audiothink.train`) on the embedded toy model and a small toy
data set. tests/e2e/heldout_probe.py records, per process, the held-out items each scoring generated answers for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                AUDIOTHINK_CACHE=str(tmp_path / "cache"),
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _args(toy_files, run_dir: Path, *extra: str) -> list[str]:
    return ["data=jsonl", f"data.train={toy_files['train']}", f"data.eval={toy_files['eval']}",
            "trainer.per_device_train_batch_size=16", "trainer.logging_steps=1", "trainer.save_steps=1",
            "eval.num_samples=8", "eval.every_steps=1", *extra, f"hydra.run.dir={run_dir}"]


def _train(tmp_path: Path, args: list[str], module: str = "audiothink.train", processes: int = 1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    out = subprocess.run([*launcher, "-m", module, *args], cwd=REPO, env=_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _heldout_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if any(k.startswith("heldout/") for k in r)]


def _best_step(records: list[dict], metric: str, mode: str) -> int:
    """The step best/ must hold: the first scoring with the best value (a tie keeps the earlier one)."""
    best = None
    for r in records:
        if best is None or (r[metric] > best[metric] if mode == "max" else r[metric] < best[metric]):
            best = r
    return best["step"]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def scored(tmp_path_factory, toy_files) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step run scored every step (eval.every_steps=1), TensorBoard on: (its folder, the process)."""
    tmp = tmp_path_factory.mktemp("scored")
    run = tmp / "with"
    return run, _train(tmp, _args(toy_files, run, "trainer.max_steps=2", "trainer.report_to=[tensorboard]"))


def test_every_step_scored_logged_and_the_best_kept(scored):
    """eval.every_steps=1, 2 steps: heldout/* at each step in metrics.jsonl, TensorBoard and the console, the
    scoring of the last step equals the end-of-run "after" figures (the same scoring), best/ holds the weights
    of the best step (checkpoint-<step>'s), final/ the last step's; training.png gets the held-out panels."""
    run, out = scored

    records = _heldout_records(run)
    assert [r["step"] for r in records] == [1, 2]  # one scoring per interval
    summary = json.loads((run / "summary.json").read_text())
    last, after = records[-1], summary["after"]
    assert last["heldout/accuracy"] == after["overall"]["accuracy"]
    assert last["heldout/think_rate"] == after["overall"]["think_rate"]
    assert last["heldout/format_failure_rate"] == after["overall"]["format_failure_rate"]
    for key in ("difficulty", "task"):
        assert after[f"by_{key}"]
        for name, stats in after[f"by_{key}"].items():
            assert last[f"heldout/{key}/{name}/accuracy"] == stats["accuracy"]
            assert last[f"heldout/{key}/{name}/think_rate"] == stats["think_rate"]
    for step in (1, 2):
        assert out.stdout.count(f"held-out step {step}/2 | accuracy ") == 1

    record = json.loads((run / "best" / "best.json").read_text())
    step = _best_step(records, "heldout/accuracy", "max")
    assert record["metric"] == "heldout/accuracy" and record["mode"] == "max" and record["step"] == step
    assert record["value"] == records[step - 1]["heldout/accuracy"]
    assert (run / "best" / "processor_config.json").is_file() and (run / "best" / "tokenizer.json").is_file()
    best = _tensors(run / "best" / "model.safetensors")
    same = _tensors(run / f"checkpoint-{step}" / "model.safetensors")
    assert best.keys() == same.keys() and all((best[k] == same[k]).all() for k in best)
    if step != 2:  # best/ is not simply the last weights
        final = _tensors(run / "final" / "model.safetensors")
        assert any(not (best[k] == final[k]).all() for k in best)
    assert not (run / "best.tmp").exists() and not (run / "best.old").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = {}
    for events in run.glob("runs/*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "heldout/accuracy" in acc.Tags()["scalars"]:
            steps = {e.step: e.value for e in acc.Scalars("heldout/accuracy")}
    assert steps == {1: pytest.approx(records[0]["heldout/accuracy"]), 2: pytest.approx(last["heldout/accuracy"])}
    assert (run / "training.png").is_file()


@pytest.mark.slow
def test_scoring_during_training_changes_no_training_step(scored, tmp_path, toy_files):
    """The same run without eval.every_steps trains the same: identical training records, completions and final
    weights (the greedy scorings draw no random numbers and leave the model in training mode)."""
    runs = {"with": scored[0], "without": tmp_path / "without"}
    _train(tmp_path, _args(toy_files, runs["without"], "trainer.max_steps=2", "trainer.report_to=[tensorboard]",
                           "eval.every_steps=null"))

    def training(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not any(t in k for t in ("runtime", "per_second", "step_time"))}
                for r in records if not any(k.startswith("heldout/") for k in r)]

    assert _heldout_records(runs["with"]) and not _heldout_records(runs["without"])
    assert training(runs["with"]) == training(runs["without"])
    assert (runs["with"] / "completions.jsonl").read_text() == (runs["without"] / "completions.jsonl").read_text()
    a, b = (_tensors(runs[n] / "final" / "model.safetensors") for n in ("with", "without"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (runs["with"] / "summary.json").read_text() == (runs["without"] / "summary.json").read_text()
    assert not (runs["without"] / "best").exists()


@pytest.mark.slow
def test_best_record_survives_a_resume(tmp_path, toy_files):
    """best.json is read back on resume: a later scoring replaces best/ only if it scores better than the
    best of the steps before the resume. (By the lowest think rate: the toy's greedy think rate starts at its
    floor, so that no later step can beat the first; a resume that forgot the record would take step 3.)"""
    run = tmp_path / "run"
    best = ["eval.best_metric=heldout/think_rate", "eval.best_mode=min"]
    _train(tmp_path, _args(toy_files, run, "trainer.max_steps=2", "trainer.report_to=[]", *best))
    first = json.loads((run / "best" / "best.json").read_text())
    out = _train(tmp_path, _args(toy_files, run, "trainer.max_steps=3", "trainer.report_to=[]", *best,
                                 "resume=true"))
    records = _heldout_records(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    step = _best_step(records, "heldout/think_rate", "min")
    assert step != 3, "step 3 scores best: this run cannot tell a kept record from a forgotten one"
    record = json.loads((run / "best" / "best.json").read_text())
    assert record == first and record["step"] == step
    assert "held-out: best so far heldout/think_rate 0.0% at step 1 (best/)" in out.stdout


@pytest.mark.slow
def test_a_benchmark_scored_during_training_is_the_evaluation_codes_score(tmp_path, toy_files):
    """eval.benchmark=toy eval.limit=8 besides the held-out items, 2 steps: benchmark/toy/* at each step in
    metrics.jsonl, TensorBoard and the console; the step-2 figures and answers are exactly what `python -m
    audiothink.evaluate benchmark=toy eval.limit=8` gives for the step-2 weights (final/); best/ by a benchmark
    figure; training.png gets the benchmark's row."""
    run = tmp_path / "run"
    out = _train(tmp_path, _args(toy_files, run, "trainer.max_steps=2", "trainer.report_to=[tensorboard]",
                                 "eval.benchmark=toy", "eval.limit=8", "eval.best_metric=benchmark/toy/accuracy"))
    records = _heldout_records(run)
    assert [r["step"] for r in records] == [1, 2]  # one record per interval, the held-out and benchmark figures
    for r in records:
        assert {"heldout/accuracy", "benchmark/toy/accuracy", "benchmark/toy/think_rate",
                "benchmark/toy/format_failure_rate"} <= set(r)
        assert any(k.startswith("benchmark/toy/difficulty/") and k.endswith("/accuracy") for k in r)
        assert any(k.startswith("benchmark/toy/task/") and k.endswith("/think_rate") for k in r)
    for step in (1, 2):
        line = next(x for x in out.stdout.splitlines() if x.startswith(f"held-out step {step}/2 |"))
        assert f"benchmark/toy accuracy {100 * records[step - 1]['benchmark/toy/accuracy']:.1f}%" in line
        assert out.stdout.count(f"held-out step {step}/2 |") == 1

    evaluated = tmp_path / "eval"
    subprocess.run([sys.executable, "-m", "audiothink.evaluate", "benchmark=toy", "eval.limit=8",
                    f"model.path={run / 'final'}", "eval.charts=false", f"hydra.run.dir={evaluated}"],
                   cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600, check=True)
    results = json.loads((evaluated / "results.json").read_text())
    last, overall = records[-1], results["summary"]["overall"]
    assert last["benchmark/toy/accuracy"] == overall["accuracy"]
    assert last["benchmark/toy/think_rate"] == overall["think_rate"]
    assert last["benchmark/toy/format_failure_rate"] == overall["format_failure_rate"]
    for dim, groups in results["summary"]["by"].items():
        for value, stats in groups.items():
            assert last[f"benchmark/toy/{dim}/{value}/accuracy"] == stats["accuracy"]

    def answers(path):
        return {r["key"]: r["output"] for r in map(json.loads, path.read_text().splitlines()) if "key" in r}

    during = answers(run / "benchmark" / "toy" / "predictions-step-2.jsonl")
    assert len(during) == 8 and during == answers(evaluated / "predictions.jsonl")

    record = json.loads((run / "best" / "best.json").read_text())
    step = _best_step(records, "benchmark/toy/accuracy", "max")
    assert record["metric"] == "benchmark/toy/accuracy" and record["step"] == step

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = {}
    for events in run.glob("runs/*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "benchmark/toy/accuracy" in acc.Tags()["scalars"]:
            steps = {e.step: e.value for e in acc.Scalars("benchmark/toy/accuracy")}
    assert steps == {1: pytest.approx(records[0]["benchmark/toy/accuracy"]),
                     2: pytest.approx(last["benchmark/toy/accuracy"])}
    assert (run / "training.png").is_file()


@pytest.mark.slow
def test_two_processes_score_once_per_interval(tmp_path, toy_files):
    """2 processes (torchrun, gloo): each scoring splits the held-out items and eval.benchmark's between the
    processes (each item's answer generated once, not once per process), and one record, one console line per
    interval."""
    run = tmp_path / "run"
    out = _train(tmp_path, _args(toy_files, run, "trainer.max_steps=2", "trainer.report_to=[]", "eval.benchmark=toy",
                                 "eval.limit=7"),
                 module="tests.e2e.heldout_probe", processes=2)
    calls = {rank: [json.loads(line) for line in (run / f"heldout-probe-rank{rank}.jsonl").read_text().splitlines()]
             for rank in (0, 1)}
    items = {json.loads(line)["id"] for line in Path(toy_files["eval"]).read_text().splitlines()}
    for step in (1, 2):
        per_rank = {rank: [i for c in calls[rank] if c["step"] == step and c["kind"] == "heldout" for i in c["ids"]]
                    for rank in (0, 1)}
        assert all(per_rank.values()), f"step {step}: a process took no part in the scoring: {per_rank}"
        scored = per_rank[0] + per_rank[1]
        # the 8 held-out items, each answered once in all (8 split 4 + 4: no filler)
        assert len(scored) == len(set(scored)) == 8 and set(scored) <= items, f"step {step}: items scored {per_rank}"
        # the benchmark's 7 items: 4 + 4, the last share filled up with one repeated item, none scored twice else
        bench = {rank: [i for c in calls[rank] if c["step"] == step and c["kind"] == "benchmark" for i in c["ids"]]
                 for rank in (0, 1)}
        assert len(bench[0]) == len(bench[1]) == 4, f"step {step}: benchmark items {bench}"
        assert len(set(bench[0] + bench[1])) == 7 and not set(bench[0]) & set(bench[1][:-1]), bench
    assert {c["step"] for r in (0, 1) for c in calls[r]} == {1, 2}  # no scoring at other times
    assert [r["step"] for r in _heldout_records(run)] == [1, 2]
    assert all(len(r) > 3 and "benchmark/toy/accuracy" in r for r in _heldout_records(run))
    for step in (1, 2):
        assert out.stdout.count(f"held-out step {step}/2 |") == 1
        assert len((run / "benchmark" / "toy" / f"predictions-step-{step}.jsonl").read_text().splitlines()) == 7
    assert (run / "best" / "best.json").is_file() and (run / "best" / "model.safetensors").is_file()
