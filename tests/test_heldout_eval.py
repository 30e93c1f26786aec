"""Held-out scoring during training (eval.every_steps): its config checks before anything loads, how the items are
shared between processes, and the held-out panel of training.png. The training runs themselves (heldout/* curves,
best/, once per interval on 2 processes): tests/e2e/test_heldout_eval.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.cli import register_resolvers

REPO = Path(__file__).resolve().parent.parent
register_resolvers()


# -- config checks (before anything loads) ------------------------------------------------------------------


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    ("eval.every_steps=0", "eval.every_steps=0: must be a whole number >= 1"),
    ("eval.every_steps=-5", "eval.every_steps=-5: must be a whole number >= 1"),
    ("eval.every_steps=2.5", "eval.every_steps=2.5: must be a whole number >= 1"),
    ("eval.every_steps=true", "eval.every_steps=True: must be a whole number >= 1"),
    ("eval.every_steps=10 eval.num_samples=0", "eval.every_steps=10: eval.num_samples=0 leaves no held-out items"),
    ("eval.every_steps=10 eval.best_metric=accuracy", "eval.best_metric='accuracy': must be one of heldout/accuracy"),
    ("eval.every_steps=10 eval.best_metric=heldout/reward", "eval.best_metric='heldout/reward': must be one of"),
    ("eval.every_steps=10 eval.best_metric=heldout/difficulty/hard/format_failure_rate", "must be one of"),
    ("eval.every_steps=10 eval.best_metric=heldout/level/hard/accuracy", "must be one of"),
    ("eval.every_steps=10 eval.best_mode=highest", "eval.best_mode='highest': must be max"),
    # eval.benchmark / eval.limit: a benchmark scored during training
    ("eval.benchmark=toy", "eval.benchmark=toy: scored every eval.every_steps optimizer steps, which is null"),
    ("eval.every_steps=5 eval.benchmark=mmau", "eval.benchmark='mmau': no such benchmark config (one of mmar, "),
    ("eval.every_steps=5 eval.benchmark=toy eval.limit=0", "eval.limit=0: must be null"),
    ("eval.every_steps=5 eval.benchmark=toy eval.limit=2.5", "eval.limit=2.5: must be null"),
    ("eval.every_steps=5 eval.limit=5", "eval.limit=5: limits eval.benchmark's items, which is null"),
    ("eval.every_steps=5 eval.best_metric=benchmark/toy/accuracy", "eval.best_metric='benchmark/toy/accuracy': must"),
    ("eval.every_steps=5 eval.benchmark=toy eval.best_metric=benchmark/mmar/accuracy", "must be one of"),
    ("eval.every_steps=5 eval.benchmark=toy eval.best_metric=benchmark/toy/reward", "must be one of"),
    ("eval.every_steps=5 eval.benchmark=toy eval.num_samples=0",
     "eval.best_metric=heldout/accuracy: eval.num_samples=0 scores no held-out items; name one of eval.benchmark's "
     "figures (e.g. eval.best_metric=benchmark/toy/accuracy)"),
])
def test_bad_settings_are_config_errors(override, message):
    from audiothink.plumbing.validate import check_train_config

    with pytest.raises(ConfigError) as info:
        check_train_config(_compose(override.split()))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["eval.every_steps=50", "eval.every_steps=1 eval.best_metric=null",
                                      "eval.every_steps=5 eval.best_metric=heldout/difficulty/hard/accuracy",
                                      "eval.every_steps=5 eval.best_metric=heldout/think_rate eval.best_mode=min",
                                      "eval.every_steps=5 eval.benchmark=toy eval.limit=20",
                                      "eval.every_steps=5 eval.benchmark=toy eval.num_samples=0 "
                                      "eval.best_metric=benchmark/toy/difficulty/hard/accuracy",
                                      # the benchmark's config is read, not its data (not here)
                                      "eval.every_steps=5 eval.benchmark=mmau_test_mini "
                                      "eval.best_metric=benchmark/mmau_test_mini/accuracy"])
def test_good_settings_pass(override):
    from audiothink.plumbing.validate import check_train_config

    check_train_config(_compose(override.split()))


def test_a_slice_the_items_lack_or_no_items_stop_before_the_model(toy_files):
    from audiothink.data import load_samples
    from audiothink.heldout_eval import check_heldout_eval

    samples = load_samples(toy_files["eval"]).samples
    cfg = _compose(["eval.every_steps=5", "eval.best_metric=heldout/difficulty/legendary/accuracy"])
    with pytest.raises(ConfigError, match=r"no slice difficulty/legendary \(they have difficulty/easy"):
        check_heldout_eval(cfg.eval, samples)
    check_heldout_eval(_compose(["eval.every_steps=5", "eval.best_metric=heldout/task/count/accuracy"]).eval, samples)
    with pytest.raises(ConfigError, match="eval.every_steps=5: the data has no held-out items"):
        check_heldout_eval(_compose(["eval.every_steps=5"]).eval, [])
    check_heldout_eval(_compose().eval, [])  # off: nothing to check


def test_a_benchmark_slice_its_items_lack_stops_before_the_model(toy_files, tmp_path):
    """eval.benchmark as the path of a yaml file (here: a unified set of 16 toy items), read and its audio checked
    before the model loads; a best_metric slice its items lack is one line naming the slices it has."""
    from audiothink.evaluate import load_training_benchmark
    from audiothink.heldout_eval import check_heldout_eval

    (tmp_path / "bench.yaml").write_text(
        f"benchmark:\n  name: mine\n  format: unified\n  root: {toy_files['eval'].parent}\n"
        f"  meta: {toy_files['eval']}\n  data_root: null\n  version: null\n  generate_toy: false\n")
    cfg = _compose(["eval.every_steps=5", f"eval.benchmark={tmp_path / 'bench.yaml'}", "eval.limit=5",
                    "eval.num_samples=0", "eval.best_metric=benchmark/mine/difficulty/legendary/accuracy"])
    bench = load_training_benchmark(cfg)
    assert bench.name == "mine" and len(bench) == 5
    with pytest.raises(ConfigError, match=r"mine's items have no slice difficulty/legendary \(they have "):
        check_heldout_eval(cfg.eval, [], bench)
    cfg.eval.best_metric = "benchmark/mine/accuracy"
    check_heldout_eval(cfg.eval, [], bench)  # the benchmark alone is something to score
    (tmp_path / "bench.yaml").write_text("benchmark:\n  name: mine\n")
    with pytest.raises(ConfigError, match=r"has no benchmark: block with name, format, root and meta"):
        load_training_benchmark(cfg)


def test_the_interval_settings_do_not_change_the_recorded_before_figures():
    """heldout_before.json records how the "before" figures were made; when to score during training is not
    part of it: switching eval.every_steps on at a resume reuses them, and a default run writes the same file."""
    from audiothink.plumbing.runfiles import heldout_settings

    default = heldout_settings(_compose(), 8)
    assert heldout_settings(_compose(["eval.every_steps=5", "eval.best_mode=min"]), 8) == default
    assert heldout_settings(_compose(["eval.every_steps=5", "eval.benchmark=toy", "eval.limit=3"]), 8) == default
    assert set(default["eval"]) == {"num_samples", "batch_size", "max_new_tokens"}
    assert heldout_settings(_compose(["eval.max_new_tokens=9"]), 8) != default


@pytest.mark.parametrize("n, world", [(8, 1), (8, 2), (7, 2), (1, 2), (5, 3)])
def test_shards_cover_every_item_with_equal_shares(n, world):
    from audiothink.heldout_eval import shard

    shares = [shard(n, rank, world) for rank in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of generate calls on every process
    assert sorted(set(i for s in shares for i in s)) == list(range(n))
    assert sum(len(s) for s in shares) - n < world  # at most world - 1 repeated fillers
    if world == 1:
        assert shares[0] == list(range(n))  # one process: the summary's order and batches


# -- the plot ---------------------------------------------------------------------------------------------


def _training(steps):
    return [{"step": s, "reward": 0.5, "loss": 0.1, "think/rate": 0.2, "completions/mean_length": 30.0,
             "entropy": 0.3} for s in steps]


def _heldout(step, acc):
    return {"step": step, "heldout/accuracy": acc, "heldout/think_rate": 0.5, "heldout/format_failure_rate": 0.0,
            "heldout/difficulty/easy/accuracy": 1.0, "heldout/difficulty/easy/think_rate": 0.0,
            "heldout/task/count/accuracy": acc, "heldout/task/count/think_rate": 0.25}


def test_training_png_has_a_heldout_panel_from_the_start(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from audiothink.plot import plot_run

    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    stats = {"n": 8, "accuracy": 0.25, "think_rate": 0.75, "accuracy_think": None, "format_failure_rate": 0.0}
    before = {"overall": stats, "by_difficulty": {"easy": stats}, "by_task": {"count": stats}}
    (tmp_path / "heldout_before.json").write_text(json.dumps({"settings": {}, "before": before}))
    records = _training(range(1, 5)) + [_heldout(2, 0.5), _heldout(4, 0.75)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        assert [p.name for p in plot_run(tmp_path)] == ["training.png", "heldout.png"]
        training = figures[0]
        panels = {ax.get_title(): ax for ax in training.axes}
        accuracy = next(ax for title, ax in panels.items() if title.startswith("held-out accuracy"))
        think = next(ax for title, ax in panels.items() if title.startswith("held-out think rate"))
        lines = {line.get_label(): line for line in accuracy.get_lines()}
        # the curve starts at the starting weights' figure (step 0), then each scoring
        assert list(lines["all items"].get_xdata()) == [0, 2, 4]
        assert list(lines["all items"].get_ydata()) == [0.25, 0.5, 0.75]
        assert list(lines["easy"].get_ydata()) == [0.25, 1.0, 1.0] and "task count" in lines
        assert list({line.get_label(): line for line in think.get_lines()}["all items"].get_ydata()) == [0.75, 0.5, 0.5]
        # the training panels are unchanged: the held-out records are not training records
        reward = panels["reward"].get_lines()[0]
        assert list(reward.get_xdata()) == [1, 2, 3, 4]

        # a run without scorings during training keeps its four panels
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _training(range(1, 5))))
        figures.clear()
        plot_run(tmp_path)
        assert len(figures[0].axes) == 4

        # eval.benchmark: one more row, its curves by the benchmark's name and dimensions (no step-0 point)
        def bench(step, acc):
            return {"step": step, "benchmark/toy/accuracy": acc, "benchmark/toy/think_rate": 0.5,
                    "benchmark/toy/format_failure_rate": 0.0, "benchmark/toy/difficulty/hard/accuracy": 0.0,
                    "benchmark/toy/task/count/think_rate": 1.0}

        records = _training(range(1, 5)) + [{**_heldout(2, 0.5), **bench(2, 0.25)}, {**_heldout(4, 0.75),
                                                                                      **bench(4, 0.5)}]
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        figures.clear()
        plot_run(tmp_path)
        panels = {ax.get_title(): ax for ax in figures[0].axes}
        assert len(figures[0].axes) == 8
        accuracy = panels["toy accuracy (greedy, every eval.every_steps)"]
        lines = {line.get_label(): line for line in accuracy.get_lines()}
        assert list(lines["all items"].get_xdata()) == [2, 4] and list(lines["all items"].get_ydata()) == [0.25, 0.5]
        assert list(lines["hard"].get_ydata()) == [0.0, 0.0]
        think = panels["toy think rate (greedy, every eval.every_steps)"]
        assert list({line.get_label(): line for line in think.get_lines()}["task count"].get_ydata()) == [1.0, 1.0]
        held = {line.get_label(): line for line in panels["held-out accuracy (greedy, every eval.every_steps)"]
                .get_lines()}
        assert list(held["all items"].get_ydata()) == [0.25, 0.5, 0.75]  # the held-out row is as before
    finally:
        for fig in figures:
            real_close(fig)
