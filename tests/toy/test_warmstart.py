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
from audiothink.toy.data import DIFFICULTY, TASKS, answer_from_facts, toy_items


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


# --------------------------------------------------------------------------- planted mistakes (issue 21, scope 1)


def _old_target(item, think: bool) -> str:
    """The warm start's target as it was before mistakes could be planted (the committed checkpoint's)."""
    answer = f"<answer>{item.answer}</answer>"
    return f"<think>{item.rationale}</think>{answer}" if think else answer


def test_mistake_shares_match_their_arguments_and_ignore_the_item(batches):
    """Of the thought-out targets, the planted shares are the arguments, for every task and difficulty; the two
    streams are independent of each other and of the think flags, and each is a stream of its own."""
    pairs = [p for b in batches for p in b]
    planted = warmstart.mistakes(len(pairs), 0.2, 0.3, 0)
    thought = [(item, m) for (item, think), m in zip(pairs, planted, strict=True) if think]
    assert len(thought) > 1500
    share = lambda sel, key: sum(getattr(m, key) for _, m in sel) / len(sel)  # noqa: E731
    assert abs(share(thought, "inconsistent") - 0.2) < 0.03 and abs(share(thought, "invalid") - 0.3) < 0.03
    both = sum(m.inconsistent and m.invalid for _, m in thought) / len(thought)
    assert abs(both - 0.2 * 0.3) < 0.02  # independent of each other
    for key in ("difficulty", "task"):
        groups: dict[str, list] = {}
        for item, m in thought:
            groups.setdefault(getattr(item, key), []).append((item, m))
        assert set(groups) == (set(DIFFICULTY.values()) if key == "difficulty" else set(TASKS))
        for name, sel in groups.items():
            # ~400-800 thought-out targets per group: a dependence of several points would show
            assert abs(share(sel, "inconsistent") - 0.2) < 0.05, (key, name)
            assert abs(share(sel, "invalid") - 0.3) < 0.05, (key, name)
    # a stream of its own: changing one share leaves the other stream's flags as they were, and neither is
    # the think flags' stream
    inconsistent = [m.inconsistent for m in planted]
    assert [m.inconsistent for m in warmstart.mistakes(len(pairs), 0.2, 0.0, 0)] == inconsistent
    assert [m.invalid for m in warmstart.mistakes(len(pairs), 0.9, 0.3, 0)] == [m.invalid for m in planted]
    flags = [t for _, t in pairs]
    assert inconsistent != [m.inconsistent for m in warmstart.mistakes(len(pairs), 0.2, 0.3, 1)]  # seeded
    assert [m.inconsistent for m in warmstart.mistakes(len(pairs), 0.4, 0.4, 0)] != flags
    assert [m.invalid for m in warmstart.mistakes(len(pairs), 0.4, 0.4, 0)] != flags
    assert warmstart.mistakes(len(pairs), 0.2, 0.3, 0) == planted  # deterministic
    with pytest.raises(ValueError, match="invalid share"):
        warmstart.mistakes(4, 0.2, 1.5, 0)


def _every_fact_combination() -> list:
    """One toy item per task and combination of facts (no audio: a target reads only task, facts and answer)."""
    import dataclasses
    import itertools

    from audiothink.toy.data import rationale, task_values

    first = {it.task: it for it in toy_items("warmstart", 16, 0)}  # a question, choices, category per task
    items = []
    for task in TASKS:
        values = task_values(task)
        combos = ([(v,) for v in values] if DIFFICULTY[task] == "easy" else
                  [(p, *perm) for p in values for perm in itertools.permutations(values)])
        items += [dataclasses.replace(first[task], clips=(), facts=f, answer=answer_from_facts(task, f),
                                      rationale=rationale(task, f)) for f in combos]
    return items


def test_every_planted_mistake_is_judged_as_planted_on_every_task():
    """Every variant, on every task and fact combination: the logic judge and the rule judge's consistency see
    exactly the planted mistake (an inconsistent thought is a valid chain concluding another option; an invalid
    one is a chain the logic judge rejects, never a malformed one, concluding what it would have concluded), and
    the answer is always gold; a hard item's pointer and hop are always the right ones. The shared measurement (chain_metrics, what toy_chains and training log) agrees."""
    from audiothink.judge.rule import consistency
    from audiothink.judge.toy_logic import check_chain
    from audiothink.think_metrics import chain_metrics

    items = _every_fact_combination()
    assert len(items) == 3 + 3 + 2 * 18
    texts, columns = [], {"question": [], "choices": [], "answer": [], "difficulty": []}
    for item in items:
        for inconsistent in (False, True):
            for invalid in (False, True):
                for mishear in range(4):
                    for variant in range(4):
                        m = warmstart.Mistake(inconsistent, invalid, mishear, variant)
                        text = warmstart.target(item, True, m)
                        p = parse(text)
                        assert p.well_formed and p.thinks and p.answer == item.answer, text
                        chain = check_chain(item.task, p.think)
                        assert chain.valid is (not invalid), (item.task, item.facts, m, p.think, chain)
                        assert consistency(p.think, p.answer, list(item.choices)) == float(not inconsistent), p.think
                        concluded = p.think.rsplit("so ", 1)[1]
                        assert (concluded != item.answer) is inconsistent and concluded in item.choices
                        if item.difficulty == "hard":
                            # the pointer and the hop stay right: the gold answer is the hopped-to clip's fact,
                            # never one that needs the hop done without the thought (which would teach the
                            # direct answer the hop: bench/RESULTS.md, toy_chains with mistakes)
                            assert p.think.split(", ")[:2] == item.rationale.split(", ")[:2], p.think
                        texts.append(text)
                        for k, v in (("question", item.question), ("choices", list(item.choices)),
                                     ("answer", item.answer), ("difficulty", item.difficulty)):
                            columns[k].append(v)
    shares = chain_metrics(texts, columns)
    for d in ("easy", "hard"):
        assert shares[f"think/inconsistent_share/{d}"] == 0.5 and shares[f"think/invalid_chain_share/{d}"] == 0.5
    # the variants are more than one each (a model learns a kind of mistake, not one string)
    hard = next(it for it in items if it.task == "count_hop")
    for flags in ((True, False), (False, True), (True, True)):
        assert len({warmstart.mistaken_chain(hard, warmstart.Mistake(*flags, m, v))
                    for m in range(4) for v in range(4)}) >= 2


def test_a_slip_states_another_conclusion_after_the_right_facts_on_every_task():
    """--inconsistent-kind slip, every task and fact combination: a slip alone keeps the right chain up to its
    last fact (so the gold answer stands written in the thought, and the answer can be right whatever the
    conclusion says) and concludes another option; the rule judge's consistency reads it as inconsistent and
    the logic judge rejects it (its conclusion does not follow). With ``invalid`` too it is the misheard kind's
    "both"; without inconsistency the kind changes nothing; the answer is always gold."""
    from audiothink.judge.rule import consistency
    from audiothink.judge.toy_logic import check_chain

    for item in _every_fact_combination():
        for mishear in range(4):
            for variant in range(4):
                slip = warmstart.Mistake(True, False, mishear, variant, slip=True)
                p = parse(warmstart.target(item, True, slip))
                assert p.well_formed and p.answer == item.answer
                *steps, concluded = p.think.split(", ")
                assert steps == item.rationale.split(", ")[:-1], p.think  # the right facts, gold the last one
                assert steps[-1].split()[-1] == item.answer
                assert concluded.startswith("so ") and concluded[3:] != item.answer and concluded[3:] in item.choices
                assert consistency(p.think, p.answer, list(item.choices)) == 0.0
                assert check_chain(item.task, p.think).valid is False, p.think
                for invalid in (False, True):
                    if invalid:
                        both = warmstart.Mistake(True, True, mishear, variant)
                        assert warmstart.mistaken_chain(item, both._replace(slip=True)) == \
                            warmstart.mistaken_chain(item, both)
                    plain = warmstart.Mistake(False, invalid, mishear, variant)
                    assert (warmstart.target(item, True, plain._replace(slip=True))
                            == warmstart.target(item, True, plain))


def test_the_inconsistent_kind_is_drawn_the_same_and_recorded(tmp_path):
    """mistakes(kind="slip") sets the kind on the same draws as "misheard"; a bad kind fails before any work,
    with the CLI's usage error; warmstart.json records the kind when it is not the default."""
    misheard, slipped = warmstart.mistakes(64, 0.5, 0.5, 3), warmstart.mistakes(64, 0.5, 0.5, 3, "slip")
    assert [m._replace(slip=True) for m in misheard] == slipped and not any(m.slip for m in misheard)
    with pytest.raises(ValueError, match="inconsistent kind"):
        warmstart.mistakes(1, 0.5, 0.5, 0, "typo")
    with pytest.raises(SystemExit) as exc:
        warmstart.main(["--out", str(tmp_path / "bad"), "--inconsistent-kind", "typo"])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
    out = warmstart.main(["--out", str(tmp_path / "m"), "--steps", "1", "--batch-size", "2",
                          "--inconsistent-share", "0.5", "--inconsistent-kind", "slip"])
    assert json.loads((out / "warmstart.json").read_text())["inconsistent_kind"] == "slip"


def test_the_skip_kind_plants_only_the_skipped_fact_on_the_same_draws(tmp_path):
    """--invalid-kind skip: the same flags and misheard draws as ``mixed``, every invalid step the skipped fact:
    on every task and fact combination the chain keeps every step before the fact (a hard item's pointer and hop),
    drops the fact, and concludes; the logic judge rejects it as a skipped fact, the rule judge's consistency
    accepts it unless the thought is also inconsistent. A bad kind fails before any work (usage error);
    warmstart.json records a kind that is not the default when there are invalid targets."""
    from audiothink.judge.rule import consistency
    from audiothink.judge.toy_logic import check_chain

    mixed, skip = warmstart.mistakes(256, 0.5, 0.5, 3, "slip"), warmstart.mistakes(256, 0.5, 0.5, 3, "slip", "skip")
    assert [m._replace(variant=0) for m in mixed] == skip and {m.variant for m in mixed} == {0, 1, 2, 3}
    for item in _every_fact_combination():
        for m in (m for m in skip[:64] if m.invalid):
            p = parse(warmstart.target(item, True, m))
            assert p.well_formed and p.answer == item.answer
            *steps, concluded = p.think.split(", ")
            assert steps == item.rationale.split(", ")[:-2], p.think  # every step before the fact, then no fact
            assert concluded.startswith("so ") and (concluded[3:] == item.answer) is (not m.inconsistent)
            chain = check_chain(item.task, p.think)
            assert chain.valid is False and not chain.malformed and (
                "skipped" in chain.why or "does not state" in chain.why), (p.think, chain)
            assert consistency(p.think, p.answer, list(item.choices)) == float(not m.inconsistent), p.think
    with pytest.raises(ValueError, match="invalid kind"):
        warmstart.mistakes(1, 0.5, 0.5, 0, "slip", "typo")
    with pytest.raises(SystemExit) as exc:
        warmstart.main(["--out", str(tmp_path / "bad"), "--invalid-kind", "typo"])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
    out = warmstart.main(["--out", str(tmp_path / "m"), "--steps", "1", "--batch-size", "2",
                          "--invalid-share", "0.5", "--invalid-kind", "skip"])
    assert json.loads((out / "warmstart.json").read_text())["invalid_kind"] == "skip"
    out = warmstart.main(["--out", str(tmp_path / "d"), "--steps", "1", "--batch-size", "2", "--invalid-kind", "skip"])
    assert "invalid_kind" not in json.loads((out / "warmstart.json").read_text())  # no invalid targets: no kind


def test_the_misattributed_kind_keeps_the_answers_value_written_in_the_chain(tmp_path):
    """--invalid-kind misattributed: the same flags, misheard draws and ``variant // 2`` draws as ``mixed``,
    every invalid step an odd variant: a hard item's chain keeps its pointer and hop and states the gold value as
    the fact of another clip than the hop's; an easy item's chain states another value as the fact and concludes
    the gold one. Either way the gold option stands written before the conclusion (the answer can copy it), the
    logic judge rejects the chain (not as malformed), and the rule judge's consistency accepts it."""
    from audiothink.judge.rule import consistency
    from audiothink.judge.toy_logic import check_chain

    mixed = warmstart.mistakes(256, 0.5, 0.5, 3, "slip")
    mis = warmstart.mistakes(256, 0.5, 0.5, 3, "slip", "misattributed")
    assert [m._replace(variant=m.variant // 2 * 2 + 1) for m in mixed] == mis
    assert {m.variant for m in mis} == {1, 3}
    for item in _every_fact_combination():
        for m in (m for m in mis[:64] if m.invalid and not m.inconsistent):
            p = parse(warmstart.target(item, True, m))
            assert p.well_formed and p.answer == item.answer
            steps, valid = p.think.split(", "), item.rationale.split(", ")
            assert len(steps) == len(valid) and steps[-1] == valid[-1] == f"so {item.answer}", p.think
            if len(valid) == 4:  # hard: pointer and hop kept, the gold value said of another clip
                assert steps[:2] == valid[:2] and steps[2] != valid[2], p.think
                assert steps[2].split()[1] == valid[2].split()[1] == item.answer, p.think
            else:  # easy: another value stated as the fact
                assert steps[0] != valid[0] and steps[0].startswith("first "), p.think
            chain = check_chain(item.task, p.think)
            assert chain.valid is False and not chain.malformed, (p.think, chain)
            assert consistency(p.think, p.answer, list(item.choices)) == 1.0, p.think
    out = warmstart.main(["--out", str(tmp_path / "m"), "--steps", "1", "--batch-size", "2",
                          "--invalid-share", "0.5", "--invalid-kind", "misattributed"])
    assert json.loads((out / "warmstart.json").read_text())["invalid_kind"] == "misattributed"


def test_the_extra_kind_adds_one_fact_that_repeats_the_conclusions_value(tmp_path):
    """--invalid-kind extra: the same flags and misheard draws as ``mixed``; every invalid chain is the valid one
    with one fact more before the conclusion, the conclusion's value said of a clip the rule does not visit (not
    the hop's); the logic judge rejects it at that step (not as malformed), the rule judge's consistency accepts
    it unless the thought is also inconsistent."""
    from audiothink.judge.rule import consistency
    from audiothink.judge.toy_logic import check_chain

    mixed = warmstart.mistakes(256, 0.5, 0.5, 3, "slip")
    extra = warmstart.mistakes(256, 0.5, 0.5, 3, "slip", "extra")
    assert [m._replace(variant=4 + m.variant // 2) for m in mixed] == extra
    for item in _every_fact_combination():
        for m in (m for m in extra[:64] if m.invalid):
            p = parse(warmstart.target(item, True, m))
            assert p.well_formed and p.answer == item.answer
            steps, valid = p.think.split(", "), item.rationale.split(", ")
            if not m.inconsistent:
                assert steps[:-2] + steps[-1:] == valid, p.think  # the valid chain, one step added
            added, concluded = steps[-2].split(), steps[-1].split()
            assert added[1] == concluded[1] and added[0] not in (valid[-2].split()[0], "first"), p.think
            chain = check_chain(item.task, p.think)
            assert chain.valid is False and not chain.malformed and "no conclusion" in chain.why, (p.think, chain)
            assert consistency(p.think, p.answer, list(item.choices)) == float(not m.inconsistent), p.think
    out = warmstart.main(["--out", str(tmp_path / "m"), "--steps", "1", "--batch-size", "2",
                          "--invalid-share", "0.5", "--invalid-kind", "extra"])
    assert json.loads((out / "warmstart.json").read_text())["invalid_kind"] == "extra"


def test_without_mistakes_the_targets_are_todays(batches, tmp_path):
    """Shares 0 (the defaults): every target is byte for byte the one the committed checkpoint trained on; a
    direct target ignores a planted mistake; a mistake needs the item's facts."""
    pairs = [p for b in batches[:20] for p in b]
    planted = warmstart.mistakes(len(pairs), 0.0, 0.0, 0)
    assert not any(m.inconsistent or m.invalid for m in planted)
    for (item, think), m in zip(pairs, planted, strict=True):
        assert warmstart.target(item, think) == warmstart.target(item, think, m) == _old_target(item, think)
        assert warmstart.target(item, False, warmstart.Mistake(True, True, 1, 1)) == _old_target(item, False)
    with pytest.raises(TypeError):
        warmstart.target(warmstart.as_sample(pairs[0][0]), True, warmstart.Mistake(True, False))


def test_sft_rows_carry_the_planted_mistakes(tmp_path):
    """--sft-rows writes the same targets the warm start trains on, mistakes included."""
    args = ["--steps", "4", "--batch-size", "4", "--items", "5", "--think-share", "0.8"]
    out = warmstart.main(["--sft-rows", str(tmp_path / "rows"), *args, "--inconsistent-share", "0.5",
                          "--invalid-share", "0.5"])
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    pairs = [p for b in warmstart.warmstart_batches(4, 4, 0.8, 0, 5) for p in b]
    planted = warmstart.mistakes(16, 0.5, 0.5, 0)
    assert [r["target"] for r in rows] == [warmstart.target(it, t, m) for (it, t), m in zip(pairs, planted)]
    assert any(r["target"] != _old_target(it, t) for r, (it, t) in zip(rows, pairs))


def test_training_uses_the_mistakes_and_records_them(tmp_path, monkeypatch):
    """The training loop encodes the planted targets (spied on the real encoder), and warmstart.json records
    the shares when set, and leaves them out at 0 (the defaults keep writing the committed recipe)."""
    seen: list[str] = []
    real = warmstart.encode_replies

    def spy(processor, clips, prompts, targets):
        seen.extend(targets)
        return real(processor, clips, prompts, targets)

    monkeypatch.setattr(warmstart, "encode_replies", spy)
    out = warmstart.main(["--out", str(tmp_path / "m"), "--steps", "2", "--batch-size", "8",
                          "--think-share", "0.8", "--inconsistent-share", "0.5"])
    pairs = [p for b in warmstart.warmstart_batches(2, 8, 0.8, 0, 2000) for p in b]
    planted = warmstart.mistakes(16, 0.5, 0.0, 0)
    assert seen == [warmstart.target(it, t, m) for (it, t), m in zip(pairs, planted)]
    assert seen != [_old_target(it, t) for it, t in pairs]
    recipe = json.loads((out / "warmstart.json").read_text())
    assert recipe["inconsistent_share"] == 0.5 and "invalid_share" not in recipe
    committed = json.loads((warmstart.ASSETS / "warmstart.json").read_text())
    assert set(committed) == set(recipe) - {"inconsistent_share"}
    with pytest.raises(ValueError):
        warmstart.main(["--out", str(tmp_path / "bad"), "--invalid-share", "-0.1"])
