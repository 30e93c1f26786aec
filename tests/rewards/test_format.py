"""rewards/format.py: the two well-formed shapes score, everything else does not; a batch with extra columns."""

import pytest

from audiothink.rewards import Format
from tests.reward_testing import FORMAT_CASES


@pytest.mark.parametrize("completion, expected", FORMAT_CASES)
def test_format(completion, expected):
    assert Format()([completion]) == [expected]


def test_format_batch_and_kwargs():
    completions = [c for c, _ in FORMAT_CASES]
    assert Format()(completions, prompts=["p"] * len(completions), trainer_state=None) == [
        e for _, e in FORMAT_CASES
    ]
