"""Does the default job learn *when* to think? Held-out toy figures before and after `python -m audiothink.train`.

    python bench/toy_learning.py                   # the default run (reward=adaptive, seed 0), ~7 min on 2 cores
    python bench/toy_learning.py --seeds 0 1 2     # three runs, one per seed, and the spread
    python bench/toy_learning.py --seeds 0 1 2 --jobs 2   # two runs at a time (one CPU thread each)
    python bench/toy_learning.py -- reward=accuracy   # overrides after -- are passed to every training run
    python bench/toy_learning.py --rollout vllm    # the same with vLLM rollouts (rollout.engine=vllm; toy: 30 s copy)
    python bench/toy_learning.py --cold-start --seeds 0 1 --jobs 2   # each seed's warm start made by audiothink.sft first

--cold-start: before each seed's training run, the README's cold start ("Cold start (SFT) then GRPO"): the toy's
SFT rows and untrained model for that seed (`python -m audiothink.toy.warmstart --sft-rows`), SFT phase 1 (both
formats, the greedy stop rule) and phase 2 (the thought-out rows alone, the mode tag out of the loss, the sampled
stop rule); the training run then starts from phase 2's final/ (`model.path`). ~25 min a seed on one core.

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


def cold_start_commands(seed: int, rows: str, phase1: str, phase2: str, val: str) -> list[list[str]]:
    """The README's cold start for ``seed`` (the toy's SFT rows into ``rows``, the two SFT phases into ``phase1``
    and ``phase2``, validation items ``val``: the toy's train split), as argument lists after ``python -m``."""
    data = ["data=jsonl", f"data.train={rows}/train.jsonl", f"data.eval={val}", "sft.shuffle=false",
            "sft.learning_rate=3e-4"]
    return [
        ["audiothink.toy.warmstart", "--sft-rows", rows, "--seed", str(seed)],
        ["audiothink.sft", f"model.path={rows}/init", *data, "eval.every_steps=100", "eval.stop_metric=think/accuracy",
         "eval.stop_at=0.9", f"seed={seed}", f"hydra.run.dir={phase1}"],
        ["audiothink.sft", f"model.path={phase1}/final", *data, "sft.target_mode=think", "sft.mode_tag_loss=false",
         "sft.max_steps=400", "eval.every_steps=50", "eval.sampled_temperature=1.2",
         "eval.stop_metric=sampled_think/accuracy", "eval.stop_at=0.9", f"seed={seed}", f"hydra.run.dir={phase2}"],
    ]


def cold_start(seed: int, root: Path, quiet: bool = False) -> tuple[Path, float]:
    """Run the cold start for ``seed`` under ``root``; returns phase 2's final/ and the wall seconds."""
    from audiothink.toy.data import default_root, ensure_toy

    val = str(ensure_toy(default_root())["train"])
    base = root / f"seed{seed}-cold"
    rows, phase1, phase2 = base / "rows", base / "sft1", base / "sft2"
    wall = 0.0
    for k, cmd in enumerate(cold_start_commands(seed, str(rows), str(phase1), str(phase2), val)):
        wall += run_command([sys.executable, "-m", *cmd], base.with_name(f"{base.name}-{k}.log") if quiet else None)
    return phase2 / "final", wall


def run(seed: int, overrides: list[str], root: Path, quiet: bool = False, cold: bool = False) -> dict:
    """One training run of the default job with `seed`; returns its figures (points) and wall time. ``quiet``:
    the run's console output goes to ``<root>/seed<seed>.log`` (runs side by side). ``cold``: from the seed's
    cold start (:func:`cold_start`), whose wall time is ``sft_wall_s``."""
    run_dir = root / f"seed{seed}"
    sft_wall, start = 0.0, []
    if cold:
        final, sft_wall = cold_start(seed, root, quiet)
        start = [f"model.path={final}"]
    cmd = [sys.executable, "-m", "audiothink.train", f"hydra.run.dir={run_dir}", f"seed={seed}", *start, *overrides]
    wall = run_command(cmd, root / f"seed{seed}.log" if quiet else None)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "wall_s": wall, "steps": summary["steps"], "run_dir": str(run_dir), "overrides": overrides,
            **({"cold_start": start[0], "sft_wall_s": sft_wall} if cold else {}), **figures(summary)}


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
    ap.add_argument("--cold-start", action="store_true",
                    help="each seed's warm start made first by the README's two-phase audiothink.sft recipe")
    args, root = parse_run_args(ap, argv, "toy_learning_")
    if args.rollout != "hf":  # first, so that an explicit rollout.engine=... after -- still wins
        args.overrides = [f"rollout.engine={args.rollout}", *args.overrides]
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda s: run(s, args.overrides, root, quiet=True, cold=args.cold_start),
                                    args.seeds))
    else:
        results = [run(seed, args.overrides, root, cold=args.cold_start) for seed in args.seeds]
    start = "each seed's cold start (audiothink.sft, two phases)" if args.cold_start else "the committed warm start"
    print(f"\ntoy learning ({results[0]['steps']} GRPO steps per run from {start}, rollout engine {args.rollout}, "
          f"runs in {root})")
    print_table(results)
    (root / "toy_learning.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = all(passes(r) for r in results)
    print(f"\ntargets per seed: gain >= {GAIN_POINTS:.0f} points, think-rate gap hard - easy >= {GAP_POINTS:.0f} "
          f"points after and < {GAP_BEFORE_POINTS:.0f} before: {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
