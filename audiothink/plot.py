"""A picture of a training run: the curves and the held-out figures, as PNGs in the run folder.

    python -m audiothink.plot runs/2026-11-30_10-00-00       # any run, also one still training

Writes (and lists) two files, from ``metrics.jsonl`` and ``summary.json`` (or ``heldout_before.json`` while the
run is going):

* ``training.png``: four panels against the optimizer step: the total reward and each reward's mean
  (``rewards/<name>/mean``); the think rate of the rollouts, overall and per difficulty (``think/rate/<d>``),
  with the rollouts' accuracy per difficulty dashed; the completion length and the think length in tokens; the
  KL to the reference (when β > 0) and the policy's entropy.
  With ``eval.every_steps`` (held-out scoring during training: ``heldout/…`` records) a third row: the held-out
  accuracy and think rate at each scoring, overall and per difficulty (per task dotted), from the starting
  weights' figures at step 0. With ``eval.benchmark`` (``benchmark/<name>/…`` records) one more row per
  benchmark: its accuracy and think rate at each scoring, overall and per slice (the benchmark's dimensions).
* ``heldout.png``: greedy held-out accuracy and think rate before and after training, per slice (overall,
  each difficulty, each task).

The end of ``python -m audiothink.train`` draws them too (``log.plots``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["plot_run", "training_figure", "heldout_figure", "main"]


def _metric_records(run: Path) -> list[dict]:
    """Every whole record of ``metrics.jsonl`` (a line cut by a kill is left out)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict):
            out.append(record)
    return out


def _records(run: Path) -> list[dict]:
    """The training steps' records (reward or loss)."""
    return [r for r in _metric_records(run) if "reward" in r or "loss" in r]


def _heldout_records(run: Path) -> list[dict]:
    """The scorings during training (eval.every_steps): the records with ``heldout/…`` or ``benchmark/…``
    figures."""
    return [r for r in _metric_records(run) if any(k.startswith(("heldout/", "benchmark/")) for k in r)]


def _benchmark_names(records: list[dict]) -> list[str]:
    """The benchmarks scored during training (eval.benchmark): ``benchmark/<name>/accuracy`` records."""
    return sorted({k.split("/")[1] for r in records for k in r if k.startswith("benchmark/") and k.count("/") == 2})


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
    from audiothink.toy import TOY_MODEL_DIR

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


def _legend_outside(ax) -> None:
    """The panel's legend to its right, outside the axes: it never covers a curve, however short the run."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _heldout_panels(axes, heldout: list[dict], before: dict | None, prefix: str = "heldout") -> None:
    """Held-out accuracy (left) and think rate (right) at each scoring during training: all items thick, each
    difficulty solid, each task dotted; ``before`` (the starting weights' figures) is their point at step 0.
    ``prefix``: ``heldout``, or ``benchmark/<name>`` for a benchmark scored during training (eval.benchmark; no
    point at step 0, each of its slices named by dimension)."""
    start = {}
    if before and prefix == "heldout":
        from audiothink.heldout_eval import heldout_logs

        start = heldout_logs(before)
    depth = prefix.count("/") + 1  # the segments of an overall key's name before its stat
    keys = sorted({k for r in heldout for k in r if k.startswith(f"{prefix}/")})
    for ax, stat, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "think_rate", "think rate")):
        for key in [f"{prefix}/{stat}"] + [k for k in keys if k.count("/") == depth + 2 and k.endswith(f"/{stat}")]:
            steps, values = _series(heldout, key)
            if key in start:
                steps, values = [0, *steps], [start[key], *values]
            if not steps:
                continue
            parts = key.split("/")[depth:]
            task = parts[0] == "task"
            overall = len(parts) == 1
            name = ("all items" if overall else f"task {parts[1]}" if task
                    else parts[1] if parts[0] == "difficulty" else f"{parts[0]} {parts[1]}")
            style = {"color": "black", "linewidth": 2} if overall else {"linestyle": ":"} if task else {}
            ax.plot(steps, values, label=name, **style, **_STYLE)
        ax.set_ylim(-0.02, 1.02)
        what = "held-out" if prefix == "heldout" else prefix.split("/", 1)[1]
        ax.set_title(f"{what} {label} (greedy, every eval.every_steps)")


def training_figure(records: list[dict], title: str, heldout: list[dict] | None = None,
                    before: dict | None = None):
    """The four training panels (reward, think rate and accuracy, lengths, KL and entropy) against the step;
    with ``heldout`` (the ``heldout/…`` records of eval.every_steps), a row of two held-out panels below them, and
    one more for each benchmark of ``benchmark/<name>/…`` records (eval.benchmark)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if heldout:
        # a row for the held-out items (if scored), one per benchmark (eval.benchmark)
        rows = (["heldout"] if any(k.startswith("heldout/") for r in heldout for k in r) else [])
        rows += [f"benchmark/{name}" for name in _benchmark_names(heldout)]
        fig, axes = plt.subplots(2 + len(rows), 2, figsize=(15, 8 + 4 * len(rows)), layout="constrained")
        for row, prefix in enumerate(rows, start=2):
            _heldout_panels(axes[row], heldout, before, prefix)
    else:
        fig, axes = plt.subplots(2, 2, figsize=(15, 8), layout="constrained")
    ax = axes[0][0]
    ax.plot(*_series(records, "reward"), label="reward (weighted total)", color="black", linewidth=2, **_STYLE)
    for key in sorted({k for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(*_series(records, key), label=key[len("rewards/"):-len("/mean")], **_STYLE)
    ax.set_title("reward")
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
    ax = axes[1][0]
    ax.plot(*_series(records, "completions/mean_length"), label="completion (tokens)", **_STYLE)
    ax.plot(*_series(records, "think/mean_tokens"), label="think block (tokens,\nthinking completions)", **_STYLE)
    ax.set_title("length")
    ax = axes[1][1]
    steps, kl = _series(records, "kl")
    if steps:
        ax.plot(steps, kl, label="KL to the reference", color="tab:red", **_STYLE)
    ax.plot(*_series(records, "entropy"), label="entropy", color="tab:blue", **_STYLE)
    ax.set_title("KL and entropy" if steps else "entropy (β = 0: no KL term)")
    for a in axes.flat:
        _legend_outside(a)
        a.set_xlabel("step")
        # steps are whole numbers: a 2-step run gets ticks 1 and 2, not 1.0, 1.2, ..., 2.0
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    fig.suptitle(f"training - {title}")
    return fig


def _value_labels(ax, bars, values) -> None:
    """Each bar's value above it; a bar of height 0 is a mark in its colour on the axis and its "0%" label."""
    ax.bar_label(bars, labels=[f"{100 * v:.0f}%" for v in values], fontsize=7, padding=2)
    for bar, v in zip(bars, values):
        if v == 0:
            ax.plot([bar.get_x() + bar.get_width() / 2], [0], marker="_", markersize=18, markeredgewidth=4,
                    color=bar.get_facecolor(), clip_on=False, zorder=3)


def heldout_figure(before: dict, after: dict | None, title: str):
    """Held-out accuracy and think rate per slice (overall, each difficulty, each task), before and after."""
    import matplotlib.pyplot as plt

    slices = [("overall", before["overall"], (after or {}).get("overall"))]
    for key in ("by_difficulty", "by_task"):
        for name, stats in before.get(key, {}).items():
            slices.append((name, stats, ((after or {}).get(key) or {}).get(name)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    x = range(len(slices))
    # a zero-height bar is drawn as its outline: a dark line on the axis, plus its "0%" label
    edge = {"edgecolor": "black", "linewidth": 1.2}
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "think_rate", "think rate")):
        values = [b[metric] for _, b, _ in slices]
        bars = ax.bar([i - 0.2 for i in x], values, width=0.4, label="before", color="tab:blue", **edge)
        _value_labels(ax, bars, values)
        if after:
            values = [(a or {}).get(metric, 0) for _, _, a in slices]
            bars = ax.bar([i + 0.2 for i in x], values, width=0.4, label="after", color="tab:orange", **edge)
            _value_labels(ax, bars, values)
        ax.set_xticks(list(x), [f"{name}\n(n={b['n']})" for name, b, _ in slices], rotation=30, ha="right",
                      fontsize=8)
        ax.set_ylim(0, 1.1)  # room above a full bar for its label
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title(f"held-out {label} (greedy)")
        ax.grid(axis="y", alpha=0.3)
    # one legend for both panels, outside them: it covers no bar
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", ncol=2, fontsize=8)
    fig.suptitle(f"held-out before / after - {title}")
    return fig


def plot_run(run: str | Path) -> list[Path]:
    """Draw ``training.png`` and ``heldout.png`` into the run folder ``run``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    records = _records(run)
    written: list[Path] = []
    before, after = _heldout(run)
    if records:
        fig = training_figure(records, _title(run), _heldout_records(run), before)
        fig.savefig(run / "training.png", dpi=110)
        plt.close(fig)
        written.append(run / "training.png")

    if before:
        fig = heldout_figure(before, after, _title(run))
        fig.savefig(run / "heldout.png", dpi=110)
        plt.close(fig)
        written.append(run / "heldout.png")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m audiothink.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
