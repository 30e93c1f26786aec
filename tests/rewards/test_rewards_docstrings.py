"""The docstring examples of the judge modules, the reward formula and the judged rewards run as written."""

from __future__ import annotations

import doctest

import pytest

import audiothink.formula
import audiothink.judge.base
import audiothink.judge.rule
import audiothink.rewards.consistency
import audiothink.rewards.repetition
import audiothink.rewards.think_length
import audiothink.rewards.think_quality


@pytest.mark.parametrize("module", [audiothink.judge.base, audiothink.judge.rule, audiothink.formula,
                                    audiothink.rewards.consistency, audiothink.rewards.think_quality, audiothink.rewards.think_length,
                                    audiothink.rewards.repetition])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
