"""audiothink.judge.toy_logic: the toy logic judge's verdicts on valid, invalid-but-correct, valid-but-wrong
(misheard) and malformed chains of every toy task, through the judge interface and the think_quality reward."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from audiothink.judge import ToyLogicJudge
from audiothink.judge.rule import think_quality
from audiothink.judge.toy_logic import check_chain, chain_validity
from audiothink.rewards import ThinkQuality
from audiothink.toy.data import _QUESTIONS, TASKS, answer_from_facts, rationale, task_values

# One item per task: its facts (one per clip), as the generator draws them, and its gold answer.
FACTS = {
    "pitch": ("middle",),
    "count": ("two",),
    "pitch_hop": ("middle", "low", "high", "middle"),  # middle -> the third clip: high
    "count_hop": ("two", "one", "three", "two"),  # two beeps -> the third clip: three
}

# task -> (kind, thought, valid: True / False / None (malformed: invalid, not in the chain language at all),
#          correct: the concluded option is the gold answer)
CASES = {
    "pitch": [
        ("valid", "first middle, so middle", True, True),
        ("invalid but correct: the conclusion does not follow", "first low, so middle", False, True),
        ("invalid but correct: no first fact", "so middle", False, True),
        ("invalid but correct: a fact of another clip", "second middle, so middle", False, True),
        ("invalid but correct: a count for a pitch clip", "first two, so middle", False, True),
        ("valid but wrong: misheard", "first high, so high", True, False),
        ("malformed: free text", "the tone sounds middle", None, True),
        ("malformed: no comma", "first middle so middle", None, True),
    ],
    "count": [
        ("valid", "first two, so two", True, True),
        ("invalid but correct: the conclusion does not follow", "first three, so two", False, True),
        ("invalid but correct: goes on after the conclusion", "first two, so two, so two", False, True),
        ("valid but wrong: misheard", "first one, so one", True, False),
        ("malformed: an empty step", "first two,, so two", None, True),
        ("malformed: empty", "  ", None, False),
    ],
    "pitch_hop": [
        ("valid", "first middle, so third, third high, so high", True, True),
        ("invalid but correct: a lucky hop", "first low, so third, third high, so high", False, True),
        ("invalid but correct: a fact of the wrong clip", "first middle, so third, fourth high, so high", False, True),
        ("invalid but correct: a skipped fact", "first middle, so third, so high", False, True),
        ("invalid but correct: a skipped hop", "first middle, third high, so high", False, True),
        ("invalid but correct: the conclusion does not follow", "first middle, so third, third low, so high",
         False, True),
        ("invalid but correct: stops before the conclusion", "first middle, so third, third high", False, True),
        ("valid but wrong: misheard pointer", "first high, so fourth, fourth middle, so middle", True, False),
        ("valid but wrong: misheard target", "first middle, so third, third low, so low", True, False),
        ("malformed: an unknown word", "first middle, so third, third high, hence high", None, True),
    ],
    "count_hop": [
        ("valid", "first two, so third, third three, so three", True, True),
        ("invalid but correct: a lucky hop", "first two, so fourth, fourth three, so three", False, True),
        ("invalid but correct: a fact of the wrong clip", "first two, so third, second three, so three", False, True),
        ("invalid but correct: a skipped fact", "first two, so third, so three", False, True),
        ("invalid but correct: the pointer skipped", "so third, third three, so three", False, True),
        ("invalid but correct: the pointer from another clip", "second two, so third, third three, so three",
         False, True),
        ("invalid but correct: a pitch for a count clip", "first two, so third, third high, so three", False, True),
        ("valid but wrong: misheard pointer", "first one, so second, second one, so one", True, False),
        ("valid but wrong: misheard target", "first two, so third, third two, so two", True, False),
        ("malformed: free text", "i count two beeps then go to clip three", None, False),
        ("malformed: a step too long", "first two, so third, third has three, so three", None, True),
    ],
}
TABLE = [(task, *case) for task in TASKS for case in CASES[task]]


def test_the_table_covers_every_kind_for_every_task():
    kinds = {"valid", "invalid but correct", "valid but wrong", "malformed"}
    for task in TASKS:
        assert {k.split(":")[0] for k, *_ in CASES[task]} == kinds, task
        # the table's "correct" column is right: the valid chains conclude what the facts say or not
        gold = answer_from_facts(task, FACTS[task])
        for kind, think, _, correct in CASES[task]:
            assert (think.rstrip().rsplit(" ", 1)[-1] == gold) == correct or kind.startswith("malformed"), kind


@pytest.mark.parametrize("task,kind,think,valid,correct", TABLE, ids=[f"{t}-{k}" for t, k, *_ in TABLE])
def test_check_chain(task, kind, think, valid, correct):
    chain = check_chain(task, think)
    assert chain.valid is (valid is True), chain.why
    assert chain.malformed is (valid is None), chain.why
    assert chain.score == float(valid is True)  # malformed is invalid: 0.0, never None (see the next tests)
    assert (chain.why == "") == (valid is True)
    assert chain.why.startswith("malformed") == (valid is None)


@pytest.mark.parametrize("task", TASKS)
def test_every_generated_rationale_is_valid_and_every_wrong_hop_is_not(task):
    """All fact combinations of the generator: its rationale is valid; the same chain hopping anywhere else is not,
    even where the other clip holds the same answer (not possible here: the three values are on three clips)."""
    values = task_values(task)
    combos = ([(v,) for v in values] if len(FACTS[task]) == 1 else
              [(p, *perm) for p in values for perm in itertools.permutations(values)])
    for facts in combos:
        assert check_chain(task, rationale(task, facts)).valid is True, facts
        if len(facts) == 4:
            right = ("second", "third", "fourth")[values.index(facts[0])]
            for wrong in {"second", "third", "fourth"} - {right}:
                value = facts[1 + ("second", "third", "fourth").index(wrong)]
                assert check_chain(task, f"first {facts[0]}, so {wrong}, {wrong} {value}, so {value}").valid is False


def test_spacing_case_and_a_final_full_stop_do_not_matter():
    assert check_chain("count_hop", "  First two ,so THIRD,  third three, so three. ").valid is True


def test_chain_validity_reads_the_task_from_the_question():
    assert chain_validity("first two, so two", _QUESTIONS["count"]).valid is True
    assert chain_validity("first two, so two", _QUESTIONS["pitch"]).valid is False  # a count for a pitch clip
    assert chain_validity("first two, so two", "which instrument?") is None  # no toy rule applies
    with pytest.raises(ValueError, match="unknown toy task"):
        check_chain("loudness", "first two, so two")


def _items(task, thinks, answer=None):
    gold = answer_from_facts(task, FACTS[task])
    return [{"question": _QUESTIONS[task], "choices": list(task_values(task)), "think": t, "answer": answer or gold}
            for t in thinks]


@pytest.mark.parametrize("task", TASKS)
def test_the_judge_scores_think_quality_by_the_chain_and_malformed_ones_zero_not_as_failures(task):
    """A malformed chain is the model's text, not the judge's failure: 0.0 like any invalid chain. Were it None
    (no score), the sample would leave the GRPO step and escape its answer's advantage: GRPO learned exactly that
    on the ablation's row f (a malformed thought whenever unsure, every reward None)."""
    judge = ToyLogicJudge()
    items = _items(task, [think for _, think, _, _ in CASES[task]])
    logged = []
    scores = asyncio.run(judge.score("think_quality", items, log_metric=lambda k, v: logged.append((k, v))))
    expected = [float(v is True) for _, _, v, _ in CASES[task]]
    assert scores == expected and None not in scores
    assert judge.failures == 0 and ("judge/failures", 0.0) in logged
    # deterministic, and one item's score does not depend on the others in its call
    assert asyncio.run(ToyLogicJudge().score("think_quality", items)) == scores
    assert [asyncio.run(ToyLogicJudge().score("think_quality", [i]))[0] for i in items] == scores


def test_free_text_keeps_the_surface_stand_in_and_consistency_is_the_rule_judges():
    judge = ToyLogicJudge()
    free = {"question": "how many beeps?", "choices": ["one", "two"], "think": "i count two beeps", "answer": "two"}
    assert asyncio.run(judge.score("think_quality", [free])) == [think_quality(free["think"], free["question"],
                                                                               free["choices"])] == [1.0]
    assert judge.failures == 0
    # consistency: the option of the chain's last "so X" against the answer, valid chain or not
    items = _items("count_hop", ["first two, so third, third three, so three"] * 2 +
                   ["first two, so fourth, fourth three, so three"])
    items[1] = {**items[1], "answer": "one"}
    assert asyncio.run(judge.score("consistency", items)) == [1.0, 0.0, 1.0]


def test_think_quality_reward_on_the_logic_judge():
    """The reward consumes the verdicts: a malformed chain scores 0 like an invalid one and counts in the mean
    that the direct answers get ((1 + 0 + 0) / 3)."""
    q, ch = _QUESTIONS["count_hop"], list(task_values("count_hop"))
    completions = ["<think>first two, so third, third three, so three</think><answer>three</answer>",  # valid
                   "<think>first two, so fourth, fourth three, so three</think><answer>three</answer>",  # lucky
                   "<think>three, i think</think><answer>three</answer>",  # malformed
                   "<answer>three</answer>"]
    rewards = asyncio.run(ThinkQuality(ToyLogicJudge())(completions, question=[q] * 4, choices=[ch] * 4))
    assert rewards == pytest.approx([1.0, 0.0, 0.0, 1 / 3])
