"""Abstention training: some items hear only noise, and their target is "cannot be determined".

Models answer from text priors (a noise-replaced MMAU-Pro costs Qwen2.5-Omni-7B 22 points, Audio
Flamingo 3 only 4). Training on items whose audio is replaced by noise, with an abstention target,
rewards listening instead of guessing. :func:`add_abstention`:

- picks ``round(share * N)`` items, the ones whose ``sha256(f"{seed}:{id}")`` is smallest, so the
  choice depends on the seed and the ids only (not on file order) and is the same on every rank;
- replaces every clip of a picked item with white Gaussian noise of the clip's duration (capped at
  ``max_seconds``), at an RMS level drawn uniformly from ``noise_rms`` per item (a fixed level would
  be a shortcut), written as 16 kHz WAVs under ``cache_dir``;
- adds ``label`` as the last choice of **every** item, picked or not (a choice that appeared only on
  noise items would give the answer away without listening), and makes it the answer of picked
  items. Items that already offer ``label`` keep their choices.

The accuracy reward needs nothing special: the label is a choice like any other. Picked items keep
their question, id and metadata; ``extra`` records ``abstain=True``, ``original_answer`` and
``original_audio``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from audiothink.audio import SAMPLE_RATE, audio_info, write_wav
from audiothink.data import DataError, Sample

__all__ = ["DEFAULT_LABEL", "add_abstention"]

DEFAULT_LABEL = "cannot be determined from the audio"
_MAX_CHOICES = 26  # letters A-Z in format_choices


def _rank(seed: int, sample_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()


def _noise(seconds: float, rng: np.random.Generator, rms: float) -> np.ndarray:
    n = max(1, int(round(seconds * SAMPLE_RATE)))
    return (rng.standard_normal(n) * rms).astype(np.float32)


def add_abstention(
    samples: Sequence[Sample],
    *,
    share: float,
    seed: int,
    cache_dir: str | os.PathLike,
    label: str = DEFAULT_LABEL,
    noise_rms: tuple[float, float] = (0.01, 0.1),
    max_seconds: float | None = None,
) -> tuple[list[Sample], int]:
    """Return ``(new samples, number of items turned into abstention items)``; ``share=0`` is a no-op."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"data.abstain.share must be in [0, 1], got {share}")
    samples = list(samples)
    if share == 0.0 or not samples:
        return samples, 0
    label = label.strip()
    if not label:
        raise ValueError("data.abstain.label must not be empty")
    low, high = (float(x) for x in noise_rms)
    if not 0.0 < low <= high:
        raise ValueError(f"data.abstain.noise_rms must be [low, high] with 0 < low <= high, got {noise_rms}")

    k = round(share * len(samples))
    picked = {s.id for s in sorted(samples, key=lambda s: _rank(seed, s.id))[:k]}
    folder = Path(cache_dir) / hashlib.sha256(f"{seed}|{low}|{high}|{max_seconds}".encode()).hexdigest()[:12]

    out = []
    for s in samples:
        choices = s.choices
        if label not in choices:
            if len(choices) >= _MAX_CHOICES:
                raise DataError(f"id={s.id}: {len(choices)} choices leave no room for the abstention choice")
            choices = (*choices, label)
        if s.id not in picked:
            out.append(dataclasses.replace(s, choices=choices))
            continue
        rng = np.random.default_rng(int.from_bytes(_rank(seed, s.id)[:8], "little"))
        rms = float(rng.uniform(low, high))
        noise_paths = []
        for i, clip in enumerate(s.audio):
            seconds = audio_info(clip, s.id)[0]
            if max_seconds is not None:
                seconds = min(seconds, max_seconds)
            target = folder / f"{hashlib.sha256(s.id.encode()).hexdigest()[:16]}-{i}.wav"
            wave = _noise(seconds, rng, rms)  # drawn even when cached, so later clips stay the same
            if not target.is_file():
                tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
                write_wav(tmp, wave)
                os.replace(tmp, target)
            noise_paths.append(str(target))
        extra = {**s.extra, "abstain": True, "original_answer": s.answer, "original_audio": list(s.audio)}
        out.append(dataclasses.replace(s, audio=tuple(noise_paths), choices=choices, answer=label, extra=extra))
    return out, len(picked)
