"""audiothink.benchmarks.runner: the listening check's replacement audio."""

from __future__ import annotations

import numpy as np
import pytest

from audiothink.benchmarks.runner import replace_audio
from audiothink.data import Sample


def test_replacement_audio_has_the_same_length_and_is_reproducible():
    s = Sample(id="x", audio=("a.wav",), question="q", choices=("a", "b"), answer="a")
    wave = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    noise = replace_audio("noise", seed=0)
    n1, n2 = noise(wave, s, 0), noise(wave, s, 0)
    assert n1.shape == wave.shape and n1.dtype == np.float32
    assert np.array_equal(n1, n2) and not np.array_equal(n1, noise(wave, s, 1))
    assert np.sqrt(np.mean(n1**2)) == pytest.approx(np.sqrt(np.mean(wave**2)), rel=0.05)
    assert not np.any(replace_audio("silence")(wave, s, 0))
    with pytest.raises(ValueError):
        replace_audio("pink")
