"""The warm start (python -m audiothink.toy.warmstart): what it trains on, and that it does not teach when to think.

Its think / no-think split must be independent of task and difficulty, so that any link between difficulty and
mode after GRPO is GRPO's doing. Checked on the batches the warm start itself trains on, and structurally: the
mode of a target does not change when the item does.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from audiothink.formats import parse
from audiothink.toy import warmstart
from audiothink.toy.data import DIFFICULTY, TASKS, answer_from_facts


@pytest.fixture(scope="module")
def batches():
    # the default recipe's first 250 steps: 4000 targets
    return list(warmstart.warmstart_batches(250, 16, 0.4, 0))


def test_think_share_is_the_same_for_every_task_and_difficulty(batches):
    pairs = [p for b in batches for p in b]
    assert len(pairs) == 4000
    overall = sum(t for _, t in pairs) / len(pairs)
    assert abs(overall - 0.4) < 0.02
    for key in ("difficulty", "task"):
        groups: dict[str, list[bool]] = {}
        for item, think in pairs:
            groups.setdefault(getattr(item, key), []).append(think)
        assert set(groups) == (set(DIFFICULTY.values()) if key == "difficulty" else set(TASKS))
        for name, flags in groups.items():
            # ~1000-2000 targets per group: a real dependence of a few points would show
            assert abs(sum(flags) / len(flags) - overall) < 0.04, (key, name, sum(flags) / len(flags))


def test_mode_of_a_target_ignores_its_item():
    """The flags are a stream of their own: the same positions get the same modes whatever the items are."""
    flags = warmstart.think_flags(64, 0.4, 0)
    zipped = [t for b in warmstart.warmstart_batches(4, 16, 0.4, 0) for _, t in b]
    assert zipped == flags
    assert warmstart.think_flags(64, 0.4, 0) == flags  # deterministic
    assert warmstart.think_flags(64, 0.4, 1) != flags
    assert not any(warmstart.think_flags(50, 0.0, 0)) and all(warmstart.think_flags(50, 1.0, 0))
    with pytest.raises(ValueError):
        warmstart.think_flags(4, 1.5, 0)


def test_targets_are_both_formats_with_correct_stepwise_thoughts(batches):
    seen = Counter()
    for item, think in batches[0] + batches[1]:
        text = warmstart.target(item, think)
        p = parse(text)
        assert p.well_formed and p.thinks == think and p.answer == item.answer
        if think:
            assert p.think == item.rationale
            assert answer_from_facts(item.task, item.facts) == item.answer
            assert p.think.endswith(f"so {item.answer}")
        seen[(item.difficulty, think)] += 1
    assert set(seen) == {("easy", True), ("easy", False), ("hard", True), ("hard", False)}


def test_warm_start_items_are_not_the_train_or_eval_items(toy_files):
    """The warm start draws its own stream: none of its clips is a clip of the toy's train or eval split
    (which the same generator makes from the same seed)."""
    import numpy as np
    import soundfile as sf

    disk = []
    for split in ("train", "eval"):
        for line in toy_files[split].read_text().splitlines():
            row = json.loads(line)
            for p in row["audio"] if isinstance(row["audio"], list) else [row["audio"]]:
                disk.append(sf.read(toy_files[split].parent / p, dtype="float32")[0])
    for item, _ in [p for b in warmstart.warmstart_batches(4, 16, 0.4, 0) for p in b]:
        for clip in item.clips:
            # clips of the same length are the only candidates (16-bit files: equal within 1e-2 is the same clip)
            same_length = [d for d in disk if d.size == clip.size]
            assert all(np.abs(d - clip).max() > 1e-2 for d in same_length)


def test_committed_checkpoint_is_small_and_records_its_recipe(toy_model_dir):
    size = sum(p.stat().st_size for p in toy_model_dir.iterdir())
    assert size < 10 * 2**20
    recipe = json.loads((toy_model_dir / "warmstart.json").read_text())
    assert {"steps", "lr", "think_share", "seed"} <= set(recipe)
