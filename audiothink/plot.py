"""A picture of a training run: the curves and the held-out figures, as PNGs in the run folder.

    python -m audiothink.plot runs/2026-11-30_10-00-00       # any run, also one still training

Writes (and lists) two files, from ``metrics.jsonl`` and ``summary.json`` (or ``heldout_before.json`` while the
run is going):

* ``training.png``: four panels against the optimizer step: the total reward and each reward's mean
  (``rewards/<name>/mean``); the think rate of the rollouts, overall and per difficulty (``think/rate/<d>``),
  with the rollouts' accuracy per difficulty dashed; the completion length and the think length in tokens; the
  KL to the reference (when β > 0) and the policy's entropy.
* ``heldout.png``: greedy held-out accuracy and think rate before and after training, per slice (overall,
  each difficulty, each task).

The end of ``python -m audiothink.train`` draws them too (``log.plots``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["plot_run", "main"]


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "reward" in record or "loss" in record:
            out.append(record)
    return out


# a dot at every logged step: a run with few logging steps still shows its points
_STYLE = {"marker": "o", "markersize": 3}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _heldout(run: Path) -> tuple[dict | None, dict | None]:
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        return summary.get("before"), summary.get("after")
    if (run / "heldout_before.json").is_file():
        return json.loads((run / "heldout_before.json").read_text(encoding="utf-8")).get("before"), None
    return None, None


def model_name(path: str) -> str:
    """A short name for a checkpoint path: its folder, with the parent's when the folder's name says little
    (``runs/x/final`` -> ``x/final``); the embedded toy checkpoint is ``toy-warmstart``."""
    from audiothink.setup import TOY_MODEL_DIR

    p = Path(path)
    if p.resolve() == TOY_MODEL_DIR.resolve():
        return "toy-warmstart"
    if p.name in ("model", "final", "") or p.name.startswith("checkpoint-"):
        return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    return p.name


def _title(run: Path) -> str:
    cfg = run / "config.yaml"
    model = ""
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        model = f" - model {model_name(str((data.get('model') or {}).get('path', '')))}"
    return f"{run.name}{model}"


def plot_run(run: str | Path) -> list[Path]:
    """Draw ``training.png`` and ``heldout.png`` into the run folder ``run``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    records = _records(run)
    written: list[Path] = []
    if records:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
        ax = axes[0][0]
        ax.plot(*_series(records, "reward"), label="reward (weighted total)", color="black", linewidth=2, **_STYLE)
        for key in sorted({k for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
            ax.plot(*_series(records, key), label=key[len("rewards/"):-len("/mean")], **_STYLE)
        ax.set_title("reward")
        ax.legend(fontsize=8)
        ax = axes[0][1]
        ax.plot(*_series(records, "think/rate"), label="think rate (all)", color="black", linewidth=2, **_STYLE)
        colors = {}
        for key in sorted({k for r in records for k in r if k.startswith("think/rate/")}):
            (line,) = ax.plot(*_series(records, key), label=f"think rate {key.rsplit('/', 1)[1]}", **_STYLE)
            colors[key.rsplit("/", 1)[1]] = line.get_color()
        for key in sorted({k for r in records for k in r if k.startswith("accuracy/rate/")}):
            d = key.rsplit("/", 1)[1]
            ax.plot(*_series(records, key), linestyle="--", color=colors.get(d), label=f"accuracy {d}", **_STYLE)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("rollouts: think rate (solid), accuracy (dashed)")
        ax.legend(fontsize=8)
        ax = axes[1][0]
        ax.plot(*_series(records, "completions/mean_length"), label="completion (tokens)", **_STYLE)
        ax.plot(*_series(records, "think/mean_tokens"), label="think block (tokens, thinking completions)", **_STYLE)
        ax.set_title("length")
        ax.legend(fontsize=8)
        ax = axes[1][1]
        steps, kl = _series(records, "kl")
        if steps:
            ax.plot(steps, kl, label="KL to the reference", color="tab:red", **_STYLE)
        ax.plot(*_series(records, "entropy"), label="entropy", color="tab:blue", **_STYLE)
        ax.set_title("KL and entropy" if steps else "entropy (β = 0: no KL term)")
        ax.legend(fontsize=8)
        for a in axes.flat:
            a.set_xlabel("step")
            a.grid(alpha=0.3)
        fig.suptitle(f"training - {_title(run)}")
        fig.savefig(run / "training.png", dpi=110)
        plt.close(fig)
        written.append(run / "training.png")

    before, after = _heldout(run)
    if before:
        slices = [("overall", before["overall"], (after or {}).get("overall"))]
        for key in ("by_difficulty", "by_task"):
            for name, stats in before.get(key, {}).items():
                slices.append((name, stats, ((after or {}).get(key) or {}).get(name)))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
        x = range(len(slices))
        for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "think_rate", "think rate")):
            ax.bar([i - 0.2 for i in x], [b[metric] for _, b, _ in slices], width=0.4, label="before")
            if after:
                ax.bar([i + 0.2 for i in x], [(a or {}).get(metric, 0) for _, _, a in slices], width=0.4,
                       label="after")
            ax.set_xticks(list(x), [s[0] for s in slices], rotation=30, ha="right")
            ax.set_ylim(0, 1.22)  # room above a full bar for the legend
            ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
            ax.set_title(f"held-out {label} (greedy)")
            ax.legend(fontsize=8, loc="upper center", ncol=2)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"held-out before / after - {_title(run)}")
        fig.savefig(run / "heldout.png", dpi=110)
        plt.close(fig)
        written.append(run / "heldout.png")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a training run folder (with metrics.jsonl)")
    args = ap.parse_args(argv)
    if not (args.run / "metrics.jsonl").is_file():
        print(f"error: {args.run}: no metrics.jsonl (is this a training run folder?)", file=sys.stderr)
        return 2
    for path in plot_run(args.run):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
