"""The embedded synthetic audio QA set ("toy").

A few thousand short tone clips with multiple-choice questions, generated with numpy so
the whole pipeline (data -> prompts -> rollouts -> rewards) can be exercised on a CPU
with no downloads. Each item has a known-correct ``rationale`` ("i count three beeps")
used to build warm-start "think" text.

Generation is deterministic: item ``i`` of a split draws from its own random stream
seeded by ``(seed, split, i)``, so the same seed gives byte-identical files, train and
eval never share a stream, and changing ``n_train`` does not change the eval set.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from audiothink.audio import SAMPLE_RATE, write_wav

__all__ = ["TOY_VERSION", "WINDOW_SECONDS", "TASKS", "generate_toy", "ensure_toy"]

TOY_VERSION = "v2"  # v2: absolute judgments (high/low, short/long) instead of first-vs-second
# The tiny test model's encoder sees 2 s; longer clips would be silently cut at load time.
WINDOW_SECONDS = 2.0
TASKS = ("count", "pitch", "duration", "compare_clips")
DIFFICULTIES = ("easy", "hard")
SOURCE = f"audiothink-toy-{TOY_VERSION}"

_SPLIT_CODES = {"train": 0, "eval": 1}  # part of the seed: keeps the splits' streams disjoint
_NUMBERS = ("one", "two", "three", "four")
_FADE_SECONDS = 0.01  # raised-cosine ramps so tone edges do not click (clicks are extra "beeps")
_HARD_SNR_DB = 10.0


@dataclass(frozen=True)
class _Item:
    """One generated question before it is written: clips plus the metadata row fields."""

    clips: tuple[np.ndarray, ...]
    question: str
    choices: tuple[str, ...]
    answer: str
    rationale: str
    category: str


# --------------------------------------------------------------------------- signal helpers


def _tone(rng: np.random.Generator, freq: float, seconds: float) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    ramp = min(int(_FADE_SECONDS * SAMPLE_RATE), n // 2)
    if ramp > 0:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
        wave[:ramp] *= fade
        wave[n - ramp :] *= fade[::-1]
    return wave


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float64)


def _sequence(rng: np.random.Generator, tones: list[tuple[float, float]], gaps: list[float]) -> np.ndarray:
    """Concatenate ``(freq, seconds)`` tones separated by ``gaps``, with random lead/tail silence."""
    parts = [_silence(rng.uniform(0.05, 0.15))]
    for k, (freq, seconds) in enumerate(tones):
        if k:
            parts.append(_silence(gaps[k - 1]))
        parts.append(_tone(rng, freq, seconds))
    parts.append(_silence(rng.uniform(0.05, 0.15)))
    return np.concatenate(parts)


def _finish(rng: np.random.Generator, wave: np.ndarray, snr_db: float | None) -> np.ndarray:
    """Scale to a random level and optionally add white noise at ``snr_db`` relative to the tones."""
    wave = wave * rng.uniform(0.3, 0.6)
    if snr_db is not None:
        active = wave[np.abs(wave) > 1e-6]
        signal_rms = float(np.sqrt(np.mean(active**2))) if active.size else 0.0
        noise_rms = signal_rms / (10 ** (snr_db / 20))
        wave = wave + rng.normal(0.0, noise_rms, size=wave.shape)
    peak = float(np.max(np.abs(wave)))
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    if wave.size > int(WINDOW_SECONDS * SAMPLE_RATE):
        raise AssertionError(f"toy clip is {wave.size / SAMPLE_RATE:.3f} s, over the {WINDOW_SECONDS} s window")
    return wave.astype(np.float32)


# Absolute pitch bands, (low band, high band) in Hz. Easy bands are far apart; hard bands
# sit either side of ~800 Hz with ~20 % between them. Shared by `pitch` and `compare_clips`.
_PITCH_BANDS = {
    "easy": ((250.0, 400.0), (1600.0, 2500.0)),
    "hard": ((600.0, 720.0), (880.0, 1000.0)),
}
# Absolute tone lengths, (short range, long range) in seconds.
_DURATION_BANDS = {
    "easy": ((0.10, 0.20), (0.9, 1.4)),
    "hard": ((0.35, 0.45), (0.55, 0.70)),
}


def _snr(difficulty: str) -> float | None:
    return None if difficulty == "easy" else _HARD_SNR_DB


def _band_freq(rng: np.random.Generator, difficulty: str, high: bool) -> float:
    lo, hi = _PITCH_BANDS[difficulty][int(high)]
    return rng.uniform(lo, hi)


def _single_tone(rng: np.random.Generator, freq: float, seconds: float, difficulty: str) -> np.ndarray:
    return _finish(rng, _sequence(rng, [(freq, seconds)], []), _snr(difficulty))


# --------------------------------------------------------------------------- tasks
# Each task gets the rng, the difficulty and the index of the (balanced) answer to produce.
# Only `count` is relational within a clip; the others are absolute judgments of one tone
# (or of one tone per clip), which small audio models learn far more easily than
# "first vs second tone" comparisons.


def _make_count(rng: np.random.Generator, difficulty: str, answer_idx: int) -> _Item:
    n = answer_idx + 1
    freq = rng.uniform(400.0, 1200.0)
    beeps = [(freq, rng.uniform(0.1, 0.14)) for _ in range(n)]
    lo, hi = (0.15, 0.3) if difficulty == "easy" else (0.05, 0.1)
    gaps = [rng.uniform(lo, hi) for _ in range(n - 1)]
    word = _NUMBERS[answer_idx]
    return _Item(
        clips=(_finish(rng, _sequence(rng, beeps, gaps), _snr(difficulty)),),
        question="how many beeps do you hear?",
        choices=_NUMBERS,
        answer=word,
        rationale=f"i count {word} beep" + ("" if n == 1 else "s"),
        category="counting",
    )


def _make_pitch(rng: np.random.Generator, difficulty: str, answer_idx: int) -> _Item:
    choices = ("low", "high")
    freq = _band_freq(rng, difficulty, high=answer_idx == 1)
    choice = choices[answer_idx]
    return _Item(
        clips=(_single_tone(rng, freq, rng.uniform(0.3, 0.6), difficulty),),
        question="is the tone high or low?",
        choices=choices,
        answer=choice,
        rationale=f"the tone sounds {choice}",
        category="pitch",
    )


def _make_duration(rng: np.random.Generator, difficulty: str, answer_idx: int) -> _Item:
    choices = ("short", "long")
    lo, hi = _DURATION_BANDS[difficulty][answer_idx]
    seconds = rng.uniform(lo, hi)
    freq = rng.uniform(400.0, 1000.0)
    choice = choices[answer_idx]
    return _Item(
        clips=(_single_tone(rng, freq, seconds, difficulty),),
        question="is the tone short or long?",
        choices=choices,
        answer=choice,
        rationale=f"the tone is {choice}",
        category="timing",
    )


def _make_compare_clips(rng: np.random.Generator, difficulty: str, answer_idx: int) -> _Item:
    choices = ("clip one", "clip two")
    highs = (True, False) if answer_idx == 0 else (False, True)
    freqs = [_band_freq(rng, difficulty, high=h) for h in highs]
    clips = tuple(_single_tone(rng, f, rng.uniform(0.3, 0.6), difficulty) for f in freqs)
    choice = choices[answer_idx]
    return _Item(
        clips=clips,
        question="which clip has the higher tone, clip one or clip two?",
        choices=choices,
        answer=choice,
        rationale=f"{choice} sounds higher",
        category="pitch",
    )


_MAKERS: dict[str, tuple[Callable[[np.random.Generator, str, int], _Item], int]] = {
    "count": (_make_count, len(_NUMBERS)),
    "pitch": (_make_pitch, 2),
    "duration": (_make_duration, 2),
    "compare_clips": (_make_compare_clips, 2),
}


# --------------------------------------------------------------------------- planning & writing


def _plan(n: int, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """Choose ``(task, difficulty, answer_idx)`` for ``n`` items.

    Tasks take turns and each task cycles through every (difficulty, answer) pair before
    repeating, so answers and difficulties are balanced even for small ``n``; the final
    shuffle removes the order pattern.
    """
    per_task: dict[str, list[tuple[str, int]]] = {}
    for task, (_, n_answers) in _MAKERS.items():
        combos = [(d, a) for d in DIFFICULTIES for a in range(n_answers)]
        cycles = -(-n // len(TASKS) // len(combos)) + 1
        pool = []
        for _ in range(cycles):
            pool.extend(combos[j] for j in rng.permutation(len(combos)))
        per_task[task] = pool
    counters = dict.fromkeys(TASKS, 0)
    plan = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        difficulty, answer_idx = per_task[task][counters[task]]
        counters[task] += 1
        plan.append((task, difficulty, answer_idx))
    return [plan[j] for j in rng.permutation(n)]


def _write_split(out_dir: Path, split: str, n: int, seed: int) -> Path:
    code = _SPLIT_CODES[split]
    plan = _plan(n, np.random.default_rng([seed, code, 2**31]))  # plan stream != item streams
    rows = []
    for i, (task, difficulty, answer_idx) in enumerate(plan):
        rng = np.random.default_rng([seed, code, i])
        item = _MAKERS[task][0](rng, difficulty, answer_idx)
        item_id = f"toy-{split}-{i:05d}"
        names = [f"{item_id}.wav"] if len(item.clips) == 1 else [f"{item_id}-{k + 1}.wav" for k in range(len(item.clips))]
        for name, clip in zip(names, item.clips):
            write_wav(out_dir / "audio" / name, clip)
        rows.append(
            {
                "id": item_id,
                # Relative paths keep the set relocatable; load_samples resolves them.
                "audio": [f"audio/{name}" for name in names] if len(names) > 1 else f"audio/{names[0]}",
                "question": item.question,
                "choices": list(item.choices),
                "answer": item.answer,
                "task": task,
                "category": item.category,
                "difficulty": difficulty,
                "source": SOURCE,
                "rationale": item.rationale,
            }
        )
    path = out_dir / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def generate_toy(out_dir: str | os.PathLike, *, n_train: int = 2000, n_eval: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write ``audio/*.wav``, ``train.jsonl`` and ``eval.jsonl`` into ``out_dir``.

    Returns ``{"train": path, "eval": path}``. Prefer :func:`ensure_toy`, which is
    idempotent and never leaves a half-written set behind.
    """
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got {n_train}, {n_eval}")
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    return {
        "train": _write_split(out, "train", n_train, seed),
        "eval": _write_split(out, "eval", n_eval, seed),
    }


def _paths(root: Path) -> dict[str, Path]:
    return {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}


def _is_done(root: Path) -> bool:
    done = root / "DONE"
    return done.is_file() and done.read_text(encoding="utf-8").strip() == TOY_VERSION


def ensure_toy(root: str | os.PathLike) -> dict[str, Path]:
    """Generate the default toy set into ``root`` unless a complete current one is there.

    The set is built in a sibling temp dir and renamed into place, so an interrupted run
    never leaves a half set, and concurrent callers (one per GPU rank) just let the
    first finisher win. An existing ``root`` is only replaced if it is empty or holds an
    older toy version, so a mistyped path cannot delete unrelated data.
    """
    root = Path(root)
    if _is_done(root):
        return _paths(root)
    old_toy = (root / "DONE").is_file()
    if root.exists() and not old_toy and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a toy data set (no DONE file); refusing to overwrite it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        generate_toy(tmp)
        (tmp / "DONE").write_text(TOY_VERSION + "\n", encoding="utf-8")
        _move_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_done(root):
        raise RuntimeError(f"toy data generation into {root} did not complete")
    return _paths(root)


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``, replacing an empty dir or an older toy version."""
    if root.exists() and not _is_done(root):
        trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            root.rename(trash)
        except FileNotFoundError:
            trash = None  # another process moved it first
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    try:
        tmp.rename(root)
    except OSError:
        # Another process finished first; its set is as good as ours.
        if not _is_done(root):
            raise
