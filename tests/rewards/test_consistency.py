"""rewards/consistency.py on the rule judge: values by case, only_correct, one log line per call."""

from __future__ import annotations

import asyncio

from audiothink.judge import RuleJudge
from audiothink.rewards import Consistency
from tests.reward_testing import TableJudge, judged_columns as _cols


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
