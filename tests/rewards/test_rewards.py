"""The built-in rewards' contract (rewards/__init__.py): names, which one is batch-wide, docstring examples.
Each reward's own tests: tests/rewards/test_<reward>.py."""

import doctest

import pytest

import audiothink.rewards
import audiothink.rewards.accuracy
import audiothink.rewards.adaptive_think
import audiothink.rewards.format
from audiothink.rewards import Accuracy, AdaptiveThink, Format


@pytest.mark.parametrize(
    "reward, name",
    [(Format, "format"), (Accuracy, "accuracy"), (AdaptiveThink, "adaptive_think")],
)
def test_names(reward, name):
    assert reward.__name__ == name
    assert reward().__name__ == name


def test_only_adaptive_is_batch_wide():
    assert AdaptiveThink.batch_wide is True
    assert not getattr(Format, "batch_wide", False)
    assert not getattr(Accuracy, "batch_wide", False)


@pytest.mark.parametrize("module", [audiothink.rewards, audiothink.rewards.format, audiothink.rewards.accuracy, audiothink.rewards.adaptive_think])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
