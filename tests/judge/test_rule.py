"""audiothink.judge.rule: the rule judge's verdicts (the stated option, consistency, think quality features) and its
refusal of prompts it does not know."""

from __future__ import annotations

import asyncio

import pytest

from audiothink.judge import Prompt, RuleJudge
from audiothink.judge.rule import consistency, stated_option, think_quality
from tests.reward_testing import JUDGED_CHOICES as CH, JUDGED_QUESTION as Q


@pytest.mark.parametrize("think,expected", [
    ("it is bowed and low, so the answer is cello", 1),
    ("violin? no: the answer is (B)", 1),
    ("first i thought cello, but it is a double bass", 2),
    ("too low for a violin, therefore double bass", 2),
    ("the answer is violin, not cello", 0),
    ("the register is very low", None),
    ("the answer is unclear, maybe violin", 0),  # an unmatched conclusion falls back to the last mention
])
def test_stated_option(think, expected):
    assert stated_option(think, CH) == expected


@pytest.mark.parametrize("think,answer,expected", [
    ("bowed and low, so cello", "(B) cello", 1.0),
    ("bowed and low, so cello", "B", 1.0),
    ("bowed and low, so cello", "violin", 0.0),
    ("no conclusion here", "cello", 0.0),
    ("so cello", "something else", 0.0),
    ("", "cello", 0.0),
])
def test_rule_consistency(think, answer, expected):
    assert consistency(think, answer, CH) == expected


def test_rule_consistency_without_choices_reads_the_last_sentence():
    assert consistency("It hums. The sound is a fridge.", "a fridge", []) == 1.0
    assert consistency("It is a fridge. No, a fan.", "a fridge", None) == 0.0


def test_rule_think_quality_features():
    full = think_quality("it is bowed and low in register, so the instrument is a cello", Q, CH)
    assert full == 1.0
    assert think_quality("cello cello cello cello cello cello", Q, CH) == 0.6  # conclusion, length, one option
    assert think_quality("hmm", Q, CH) == 0.2  # not degenerate, nothing else
    assert think_quality("violin or cello or double bass", Q, CH) == 0.7  # no commitment (+0.1 missing)
    assert think_quality(None, Q, CH) == 0.0
    scores = [think_quality(t, Q, CH) for t in ["a b c d e", "the melody is low: cello", "w " * 400]]
    assert all(0 <= s <= 1 and round(s * 10) == s * 10 for s in scores)


def test_rule_judge_refuses_unknown_prompts():
    with pytest.raises(ValueError, match="rule judge has no rule for 'politeness'"):
        RuleJudge().check_task("politeness", ["think"])
    prompt = Prompt("politeness", "{think}", labels={"yes": 1})
    with pytest.raises(ValueError, match="politeness"):
        asyncio.run(RuleJudge().score(prompt, [{"think": "x"}]))
