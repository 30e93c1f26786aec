"""rewards/repetition.py: repeated n-grams cost their share, in the whole reply or in the think only."""

from __future__ import annotations

import pytest

from audiothink.rewards import Repetition


def test_repetition():
    # 14 words, 12 trigrams, 5 distinct ("the tone is", "tone is high", "is high and", "high and the", "and the tone")
    assert Repetition(n=3)(["the tone is high and the tone is high and the tone is high"]) == [pytest.approx(-7 / 12)]
    assert Repetition(n=3)(["a clean sentence without loops", ""]) == [0.0, 0.0]
    assert Repetition(n=1, scope="think")(["<think>x x</think><answer>y y y</answer>"]) == [-0.5]
    with pytest.raises(ValueError):
        Repetition(scope="answer")
