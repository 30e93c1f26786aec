"""Judge-based rewards (consistency, think_quality) on the rule judge; think_length and repetition."""

from __future__ import annotations

import asyncio
import doctest

import pytest

import audiothink.formula
import audiothink.judge.base
import audiothink.judge.rule
import audiothink.rewards.consistency
import audiothink.rewards.repetition
import audiothink.rewards.think_length
import audiothink.rewards.think_quality
from audiothink.judge import Prompt, RuleJudge
from audiothink.judge.rule import consistency, stated_option, think_quality
from audiothink.rewards import Consistency, Repetition, ThinkLength, ThinkQuality
from tests.reward_testing import TableJudge

CH = ["violin", "cello", "double bass"]
Q = "which instrument plays the low melody?"


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


def test_prompt_parsing_and_validation():
    p = Prompt("x", "{think} {choices}", scale={"min": 0, "max": 1, "step": 0.1})
    assert [p.parse(r) for r in ["0.3", "\n 0.3 \nmore", ".5", "1.0.", "-0.1", "0.35", "3/10", "", None]] == [
        0.3, 0.3, 0.5, 1.0, None, None, None, None, None]
    assert p.render({"think": "t", "choices": ["a", "b"]}) == "t (A) a\n(B) b"
    assert p.fields == ("think", "choices")
    with pytest.raises(ValueError, match="exactly one of labels or scale"):
        Prompt("x", "{think}")
    with pytest.raises(ValueError, match="bad template"):
        Prompt("x", "{think", labels={"yes": 1})
    with pytest.raises(ValueError, match=r"uses field\(s\) \['audio'\]"):
        Consistency(TableJudgeWithPrompt("consistency", "{audio}"))


class TableJudgeWithPrompt(RuleJudge):
    def __init__(self, name, template):
        super().__init__({name: {"template": template, "labels": {"yes": 1.0, "no": 0.0}}})

    def check_task(self, task, fields):
        return super(RuleJudge, self).check_task(task, fields)


def _cols(n, answer="cello"):
    return {"question": [Q] * n, "choices": [CH] * n, "answer": [answer] * n}


def test_consistency_values_by_case():
    judge = TableJudge({"consistency": {"so cello": 1.0, "so violin": 0.0}})
    completions = [
        "<think>so cello</think><answer>cello</answer>",      # correct, judged consistent
        "<think>so violin</think><answer>cello</answer>",     # correct, judged inconsistent
        "<think>so violin</think><answer>violin</answer>",    # wrong: only_correct -> 0, not judged
        "<answer>violin</answer>",                            # no think -> 1
        "violin",                                             # malformed, no think block -> 1
        "<think>so cello</think>",                            # think without an answer -> 0
        "<think>unknown to the judge</think><answer>cello</answer>",  # judge failure -> None
    ]
    scores = asyncio.run(Consistency(judge)(completions, **_cols(len(completions))))
    assert scores == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, None]
    assert [i["think"] for _, i in judge.seen] == ["so cello", "so violin", "unknown to the judge"]
    assert judge.failures == 1
    # a row whose gold answer is not among its choices cannot say correct or wrong
    assert asyncio.run(Consistency(judge)(completions[:1], **_cols(1, answer="tuba"))) == [None]


def test_consistency_only_correct_off_judges_every_think():
    judge = TableJudge({"consistency": {"so cello": 1.0, "so violin": 1.0}})
    completions = ["<think>so violin</think><answer>violin</answer>", "<answer>cello</answer>"]
    assert asyncio.run(Consistency(judge, only_correct=False)(completions, **_cols(2))) == [1.0, 1.0]


def test_consistency_logs_every_call():
    logged = []
    asyncio.run(Consistency(RuleJudge())(["<answer>cello</answer>"], **_cols(1), log_metric=lambda *kv: logged.append(kv)))
    assert [k for k, _ in logged] == ["judge/failures", "judge/latency_s"]


def test_think_quality_mean_and_local_phase():
    judge = TableJudge({"think_quality": {"good": 0.8, "poor": 0.3}})
    reward = ThinkQuality(judge)
    completions = ["<think>good</think><answer>cello</answer>", "<think>poor</think><answer>cello</answer>",
                   "<answer>cello</answer>", "<think>bad judge day</think><answer>x</answer>"]
    local = asyncio.run(reward.local(completions, **_cols(4)))
    assert local == [0.8, 0.3, None, None]
    # after the gather: the no-think sample gets the mean of the scored think samples; the failure stays None
    assert asyncio.run(reward(completions, local_scores=local)) == pytest.approx([0.8, 0.3, 0.55, None])
    assert judge.failures == 1
    # no local scores given: both phases in one call, same result
    assert asyncio.run(ThinkQuality(judge)(completions, **_cols(4))) == pytest.approx([0.8, 0.3, 0.55, None])
    assert asyncio.run(ThinkQuality(judge, empty_value=0.25)(["<answer>a</answer>"] * 2, **_cols(2))) == [0.25] * 2


def test_think_length_band():
    reward = ThinkLength(target=40, tolerance=20)
    think = lambda n: "<think>" + "w " * n + "</think><answer>a</answer>"  # noqa: E731
    assert reward([think(20), think(40), think(60)]) == [0.0, 0.0, 0.0]
    assert reward([think(80), think(100), think(500), think(10)]) == [-0.5, -1.0, -1.0, -0.25]
    assert ThinkLength(target=40, tolerance=20, penalize_short=False)([think(1)]) == [0.0]
    assert reward(["<answer>a</answer>", "garbage"]) == [0.0, 0.0]
    with pytest.raises(ValueError):
        ThinkLength(target=0)


def test_think_length_counts_tokens_with_a_tokenizer(toy_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_model_dir)
    text = "i count three beeps and then two more"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    reward = ThinkLength(target=n, tolerance=0, tokenizer=str(toy_model_dir))
    assert reward.count(text) == n
    assert reward([f"<think>{text}</think><answer>a</answer>"]) == [0.0]


def test_repetition():
    # 14 words, 12 trigrams, 5 distinct ("the tone is", "tone is high", "is high and", "high and the", "and the tone")
    assert Repetition(n=3)(["the tone is high and the tone is high and the tone is high"]) == [pytest.approx(-7 / 12)]
    assert Repetition(n=3)(["a clean sentence without loops", ""]) == [0.0, 0.0]
    assert Repetition(n=1, scope="think")(["<think>x x</think><answer>y y y</answer>"]) == [-0.5]
    with pytest.raises(ValueError):
        Repetition(scope="answer")


@pytest.mark.parametrize("module", [audiothink.judge.base, audiothink.judge.rule, audiothink.formula,
                                    audiothink.rewards.consistency, audiothink.rewards.think_quality, audiothink.rewards.think_length,
                                    audiothink.rewards.repetition])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
