"""Does the default job learn *when* to think? Held-out toy figures before and after `python -m audiothink.train`.

    python bench/toy_learning.py                   # the default run (reward=adaptive, seed 0), ~7 min on 2 cores
    python bench/toy_learning.py --seeds 0 1 2     # three runs, one per seed, and the spread
    python bench/toy_learning.py --seeds 0 1 2 --jobs 2   # two runs at a time (one CPU thread each)
    python bench/toy_learning.py -- reward=accuracy   # overrides after -- are passed to every training run
    python bench/toy_learning.py --rollout vllm    # the same with vLLM rollouts (rollout.engine=vllm; toy: 30 s copy)

Runs the training entry point exactly as the README's first command does (plus `seed=<s>` and the overrides
given), then reads each run's summary.json: greedy held-out accuracy and think rate, overall and by
difficulty, scored by the same code before and after GRPO. Targets, per seed: overall gain >= 10 points,
and after training the think rate on hard items minus that on easy items >= 40 points (before: < 10).
The script exits 1 when a seed misses one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GAIN_POINTS = 10.0  # overall accuracy after - before
GAP_POINTS = 40.0  # think rate hard - easy, after training
GAP_BEFORE_POINTS = 10.0  # the same gap before training stays under this


def run_command(cmd: list[str], log: Path | None = None) -> float:
    """Print and run ``cmd`` (its output to ``log`` if given, else to the console); returns its wall seconds.
    A failing run raises (subprocess.CalledProcessError)."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    if log is not None:
        with open(log, "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    else:
        subprocess.run(cmd, check=True)
    return time.time() - t0


def run(seed: int, overrides: list[str], root: Path, quiet: bool = False) -> dict:
    """One training run of the default job with `seed`; returns its figures (points) and wall time. ``quiet``:
    the run's console output goes to ``<root>/seed<seed>.log`` (runs side by side)."""
    run_dir = root / f"seed{seed}"
    cmd = [sys.executable, "-m", "audiothink.train", f"hydra.run.dir={run_dir}", f"seed={seed}", *overrides]
    wall = run_command(cmd, root / f"seed{seed}.log" if quiet else None)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "wall_s": wall, "steps": summary["steps"], "run_dir": str(run_dir), "overrides": overrides,
            **figures(summary)}


def figures(summary: dict) -> dict:
    """Accuracy and think rate (points), overall and by difficulty, before and after; gain and think gaps."""
    out = {}
    for when in ("before", "after"):
        s = summary[when]
        out[f"{when}_acc"] = 100 * s["overall"]["accuracy"]
        for d in ("easy", "hard"):
            out[f"{when}_acc_{d}"] = 100 * s["by_difficulty"][d]["accuracy"]
            out[f"{when}_think_{d}"] = 100 * s["by_difficulty"][d]["think_rate"]
        out[f"{when}_gap"] = out[f"{when}_think_hard"] - out[f"{when}_think_easy"]
    out["gain"] = out["after_acc"] - out["before_acc"]
    return out


def passes(f: dict) -> bool:
    return f["gain"] >= GAIN_POINTS and f["after_gap"] >= GAP_POINTS and abs(f["before_gap"]) < GAP_BEFORE_POINTS


def print_table(results: list[dict]) -> None:
    cols = [("acc before", "before_acc"), ("acc after", "after_acc"), ("gain", "gain"),
            ("easy b->a", ("before_acc_easy", "after_acc_easy")), ("hard b->a", ("before_acc_hard", "after_acc_hard")),
            ("think easy b->a", ("before_think_easy", "after_think_easy")),
            ("think hard b->a", ("before_think_hard", "after_think_hard")), ("gap before", "before_gap"),
            ("gap after", "after_gap"), ("wall s", "wall_s")]
    print(f"\n{'seed':<6}" + "".join(f"{name:>17}" for name, _ in cols) + "   target")

    def cell(r, key):
        if isinstance(key, tuple):
            return f"{r[key[0]]:.1f}->{r[key[1]]:.1f}"
        return f"{r[key]:.0f}" if key == "wall_s" else f"{r[key]:+.1f}" if key in ("gain", "before_gap", "after_gap") \
            else f"{r[key]:.1f}%"

    for r in results:
        print(f"{r['seed']:<6}" + "".join(f"{cell(r, k):>17}" for _, k in cols) + f"   {'PASS' if passes(r) else 'MISS'}")
    if len(results) > 1:
        print("\nspread over seeds (min / mean / max, population std):")
        for name, key in (("held-out accuracy after", "after_acc"), ("gain (points)", "gain"),
                          ("think rate hard - easy after (points)", "after_gap"),
                          ("accuracy hard after", "after_acc_hard"), ("accuracy easy after", "after_acc_easy")):
            xs = [r[key] for r in results]
            print(f"  {name:<40} {min(xs):6.1f} / {statistics.mean(xs):6.1f} / {max(xs):6.1f}   "
                  f"std {statistics.pstdev(xs):.1f}")


def parse_run_args(ap: argparse.ArgumentParser, argv: list[str], prefix: str) -> tuple[argparse.Namespace, Path]:
    """The options every toy bench takes (--jobs, --out, overrides after --); returns them and the runs' folder."""
    ap.add_argument("--jobs", type=int, default=1, help="training runs at a time (each uses cpu_threads=1 by "
                    "default, so 2 on a 2-core machine; the figures do not depend on it, the wall times do)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a new temp folder)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every training run (after --)")
    args = ap.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    return args, root


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per seed")
    ap.add_argument("--rollout", choices=["hf", "vllm"], default="hf",
                    help="rollout engine (rollout.engine): hf (the default) or vllm (needs vLLM; the toy then trains "
                         "on its 30 s-window copy, ~19x slower HF passes on CPU, see bench/vllm_cpu/FINDINGS.md)")
    args, root = parse_run_args(ap, argv, "toy_learning_")
    if args.rollout != "hf":  # first, so that an explicit rollout.engine=... after -- still wins
        args.overrides = [f"rollout.engine={args.rollout}", *args.overrides]
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda s: run(s, args.overrides, root, quiet=True), args.seeds))
    else:
        results = [run(seed, args.overrides, root) for seed in args.seeds]
    print(f"\ntoy learning ({results[0]['steps']} GRPO steps per run, rollout engine {args.rollout}, runs in {root})")
    print_table(results)
    (root / "toy_learning.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = all(passes(r) for r in results)
    print(f"\ntargets per seed: gain >= {GAIN_POINTS:.0f} points, think-rate gap hard - easy >= {GAP_POINTS:.0f} "
          f"points after and < {GAP_BEFORE_POINTS:.0f} before: {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
