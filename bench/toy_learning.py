"""Does the default job learn? Held-out toy accuracy before and after `python -m audiothink.train`.

    python bench/toy_learning.py                 # the default run (reward=adaptive), ~3-5 min on 2 cores
    python bench/toy_learning.py reward=accuracy # any overrides are passed to the training job

Runs the training entry point exactly as the README's first command does (plus the overrides given),
then reads the run's summary.json: greedy accuracy on the held-out toy items scored by the same code
before and after GRPO. The target is after - before >= 10 points; the script exits 1 when it is missed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_POINTS = 10.0


def main(overrides: list[str]) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="toy_learning_"))
    cmd = [sys.executable, "-m", "audiothink.train", f"hydra.run.dir={run_dir}", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    before, after = summary["before"], summary["after"]

    print(f"\ntoy learning ({summary['steps']} GRPO steps, {wall:.0f} s wall, run dir {run_dir})")
    print(f"{'held-out slice':<20}{'n':>5}{'before':>10}{'after':>10}{'delta':>10}   think rate before -> after")
    rows = [("overall", before["overall"], after["overall"])]
    rows += [(f"difficulty={k}", before["by_difficulty"][k], v) for k, v in after["by_difficulty"].items()]
    rows += [(f"task={k}", before["by_task"][k], v) for k, v in after["by_task"].items()]
    for name, b, a in rows:
        delta = 100 * (a["accuracy"] - b["accuracy"])
        print(
            f"{name:<20}{a['n']:>5}{100 * b['accuracy']:>9.1f}%{100 * a['accuracy']:>9.1f}%{delta:>+9.1f}"
            f"   {100 * b['think_rate']:.0f}% -> {100 * a['think_rate']:.0f}%"
        )
    gain = 100 * (after["overall"]["accuracy"] - before["overall"]["accuracy"])
    ok = gain >= TARGET_POINTS
    print(f"\ngain {gain:+.1f} points (target >= {TARGET_POINTS:.0f}): {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
