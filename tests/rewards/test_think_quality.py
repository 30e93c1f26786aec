"""rewards/think_quality.py on the rule judge: the mean and the local phase."""

from __future__ import annotations

import asyncio

import pytest

from audiothink.rewards import ThinkQuality
from tests.reward_testing import TableJudge, judged_columns as _cols


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
