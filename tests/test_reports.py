"""What the reports say and show: console tables that line up, titles that name what was read, charts whose
every bar can be seen and whose legends cover none (checked on matplotlib's artists, not on pixels)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LONG = "music: counterpoint and voice leading in a four-part chorale"
assert len(LONG) == 60


# --------------------------------------------------------------------------- console tables


def _columns(line: str) -> list[int]:
    """The end positions of the line's right-aligned cells (each cell ends where a run of non-spaces ends)."""
    import re

    return [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)][1:]


def test_forced_mode_table_lines_up_with_a_60_character_slice_name():
    from audiothink.benchmarks.report import forced_lines

    block = {"n": 150, "free": 1.0, "free_think_rate": 0.0, "think": 1.0, "direct": 0.3733}
    fs = {"modes": ["think", "direct"], **block,
          "by": {"sub-category": {LONG: dict(block, n=7), "short": dict(block, n=1000)}}}
    lines = forced_lines(fs)
    assert len(lines) == 4 and any(LONG in ln for ln in lines)
    ends = [_columns(ln) for ln in lines]
    assert all(e == ends[0] for e in ends), "\n".join(lines)  # every column ends where the header's ends
    assert len({len(ln) for ln in lines}) == 1
    assert "sub-category=" + LONG + " " in lines[2]  # the name whole, and apart from the n column


def test_held_out_table_lines_up_with_a_long_task_name():
    from audiothink.plumbing.runfiles import summary_lines

    stats = {"n": 2, "accuracy": 0.5, "think_rate": 0.0}
    result = {"overall": stats, "by_difficulty": {"easy": stats}, "by_task": {LONG: stats, "count": stats}}
    lines = summary_lines({"run_dir": "r", "steps": 3, "before": result, "after": result})[1:]
    ends = [_columns(ln)[-4:] for ln in lines[1:]]  # n, accuracy before -> after, think rate before -> after
    assert all(e == ends[0] for e in ends), "\n".join(lines)


# --------------------------------------------------------------------------- titles and --help


def test_mmar_version_counts_the_items_of_the_file(tmp_path):
    from audiothink.benchmarks import load_mmar
    from tests.helpers import make_mmar_fixture

    b = load_mmar(make_mmar_fixture(tmp_path))
    assert b.version == "MMAR (14 items)"  # not the release's "1,000 items" whatever the file holds
    assert load_mmar(tmp_path / "MMAR-meta.jsonl", version="v2").version == "v2"


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["audiothink.plot", "audiothink.toy.warmstart"])
def test_help_names_the_command_that_runs_it(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module} "), out.stdout[:200]


# --------------------------------------------------------------------------- multi-process console


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "a line", None, None)


def test_start_up_lines_on_the_main_process_only_warnings_on_every_rank(monkeypatch):
    from audiothink.plumbing.console import ConsoleFormatter, MainProcessOnly

    main, other = MainProcessOnly(rank=0), MainProcessOnly(rank=1)
    for name in ("audiothink.train", "audiothink.progress", "transformers.trainer"):
        assert main.filter(_record(name, logging.INFO))
        assert not other.filter(_record(name, logging.INFO)), name
        for level in (logging.WARNING, logging.ERROR):
            assert main.filter(_record(name, level)) and other.filter(_record(name, level))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not MainProcessOnly().filter(_record("audiothink.data", logging.INFO))  # the rank from the launcher
    assert ConsoleFormatter().format(_record("x.y", logging.WARNING)) == "warning: rank 1: x.y: a line"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ConsoleFormatter().format(_record("x.y", logging.WARNING)) == "warning: x.y: a line"


def test_setup_console_gates_the_run_handlers(monkeypatch):
    from audiothink.plumbing.console import MainProcessOnly, setup_console

    handler = logging.StreamHandler()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setenv("RANK", "1")
    setup_console()
    setup_console()  # twice (train then evaluate in one process): one filter
    assert [type(f) for f in handler.filters] == [MainProcessOnly]
    assert not handler.filter(_record("audiothink.train", logging.INFO))
    assert handler.filter(_record("audiothink.train", logging.WARNING))


def test_ddp_looks_for_unused_parameters_only_where_some_idle(toy_model_dir, tmp_path):
    """The toy (Qwen2-Audio) uses every weight in an audio question; the Omni thinker's vision encoder idles."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

    from audiothink.models import idle_trainable_parameters
    from audiothink.toy.omni import save_tiny_omni

    assert not idle_trainable_parameters(Qwen2AudioForConditionalGeneration.from_pretrained(toy_model_dir))
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(save_tiny_omni(tmp_path / "omni"))
    assert idle_trainable_parameters(thinker)
    for name, p in thinker.named_parameters():
        p.requires_grad_("visual" not in name.split("."))
    assert not idle_trainable_parameters(thinker)


# --------------------------------------------------------------------------- charts


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _bars(ax):
    return [p for c in ax.containers for p in c.patches]


def _check_every_bar_visible(ax, renderer):
    """A bar of height (or width) 0 still shows: an outline and a value label at the bar."""
    bars = _bars(ax)
    assert bars
    for bar in bars:
        assert bar.get_linewidth() > 0 and bar.get_edgecolor()[3] > 0  # the outline: a line where the bar is 0
    labels = [t for t in ax.texts if t.get_text()]
    marks = [ln for ln in ax.lines if ln.get_marker() not in (None, "None", "")]
    for bar in bars:
        box = bar.get_window_extent(renderer)
        near = [t for t in labels if t.get_window_extent(renderer).padded(8).overlaps(box)]
        assert near, f"no value label at the bar at {bar.get_xy()}"
        if min(bar.get_width(), bar.get_height()) == 0:  # an empty bar: a mark in its colour where it would be
            at = [ln for ln in marks if ln.get_window_extent(renderer).overlaps(box.padded(2))
                  and matplotlib.colors.same_color(ln.get_color(), bar.get_facecolor())]
            assert at, f"no mark at the empty bar at {bar.get_xy()}"
    return labels


def _check_legend_covers_no_bar(fig, renderer):
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    for legend in legends:
        lbox = legend.get_window_extent(renderer)
        for ax in fig.axes:
            for bar in _bars(ax):
                assert not lbox.overlaps(bar.get_window_extent(renderer)), "the legend covers a bar"
            for text in ax.texts:
                assert not lbox.overlaps(text.get_window_extent(renderer)), "the legend covers a value label"


def _summary(think_rate: float, accuracy_last: float = 1.0) -> dict:
    def st(n, acc):
        return {"n": n, "accuracy": acc, "think_rate": think_rate}

    return {"overall": st(300, 0.713), "by_difficulty": {"easy": st(150, 1.0), "hard": st(150, 0.427)},
            "by_task": {"count": st(100, 0.8), "pitch": st(100, 0.7), "pitch_hop": st(100, accuracy_last)}}


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures the code under test closes, kept open for their artists (closed at the end)."""
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        real_close(fig)


def _plot(tmp_path, kept_figures, records=None, summary=None) -> dict:
    """plot_run on a run folder holding these records and this summary: its figures by file name."""
    from audiothink.plot import plot_run

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records or []))
    if summary:
        (tmp_path / "summary.json").write_text(json.dumps({"steps": 2, **summary}))
    written = plot_run(tmp_path)
    assert len(written) == len(kept_figures)
    return {p.name: fig for p, fig in zip(written, kept_figures)}


def test_heldout_chart_shows_zero_bars_n_per_slice_and_a_legend_off_the_bars(tmp_path, kept_figures):
    # think rate 0 before and after: the panel that used to be empty
    fig = _plot(tmp_path, kept_figures, summary={"before": _summary(0.0), "after": _summary(0.0)})["heldout.png"]
    renderer = _drawn(fig)
    accuracy, think = fig.axes[:2]
    labels = _check_every_bar_visible(think, renderer)
    assert {t.get_text() for t in labels} == {"0%"}
    _check_every_bar_visible(accuracy, renderer)
    ticks = [t.get_text() for t in think.get_xticklabels()]
    assert ticks[0] == "overall\n(n=300)" and ticks[-1] == "pitch_hop\n(n=100)"
    _check_legend_covers_no_bar(fig, renderer)


def _records(steps: int) -> list[dict]:
    return [{"step": s, "reward": 0.5 + 0.1 * s, "rewards/format/mean": 0.9, "think/rate": 0.2, "think/rate/easy": 0.1,
             "accuracy/rate/easy": 0.9, "completions/mean_length": 30.0, "think/mean_tokens": 12.0,
             "entropy": 0.3} for s in range(1, steps + 1)]


@pytest.mark.parametrize("steps", [2, 3, 150])
def test_training_chart_has_whole_steps_and_legends_beside_the_curves(steps, tmp_path, kept_figures):
    fig = _plot(tmp_path, kept_figures, records=_records(steps))["training.png"]
    renderer = _drawn(fig)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi]
        assert shown and all(float(t.get_text().replace("\u2212", "-")).is_integer() for t in shown), \
            [t.get_text() for t in shown]
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)), ax.get_title()


def test_evaluation_charts_show_zero_bars_and_keep_the_legend_off_the_last_bar(tmp_path, kept_figures):
    from audiothink.benchmarks import report

    figures = kept_figures

    def slice_stats(n, acc, think):
        return {"n": n, "accuracy": acc, "think_rate": think}

    results = {
        "benchmark": {"name": "mmar", "version": "MMAR (14 items)"}, "model": {"name": "m", "path": "m"},
        "summary": {"by": {"modality": {"sound": slice_stats(4, 0.5, 0.0), "music": slice_stats(3, 0.0, 0.0),
                                        LONG: slice_stats(7, 1.0, 0.0)}}},
        "listen_check": {"audio": "noise", "n": 14, "accuracy_real": 0.5, "accuracy_replaced": 0.0,
                         "drop_points": 50.0,
                         "by": {"modality": {"sound": {"n": 4, "accuracy_real": 1.0, "accuracy_replaced": 0.0},
                                             "music": {"n": 10, "accuracy_real": 0.0, "accuracy_replaced": 0.0}}}},
    }
    names = report.write_charts(tmp_path, results)
    assert names == ["chart_modality.png", "chart_listen_check.png"]
    assert all((tmp_path / n).stat().st_size > 5_000 for n in names)
    assert len(figures) == 2
    for fig in figures:
        renderer = _drawn(fig)
        (ax,) = fig.axes
        _check_every_bar_visible(ax, renderer)
        _check_legend_covers_no_bar(fig, renderer)
        assert all("(n=" in t.get_text() for t in ax.get_yticklabels())  # n per slice
