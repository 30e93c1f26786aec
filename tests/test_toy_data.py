"""Tests for the synthetic toy set: schema, determinism, clip lengths and that answers are audible."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiothink.audio import SAMPLE_RATE
from audiothink.data import load_samples
from audiothink.toy import data as toy
from audiothink.toy.data import TOY_VERSION, WINDOW_SECONDS, ensure_toy, generate_toy

N_TRAIN, N_EVAL = 48, 16


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> dict[str, Path]:
    return generate_toy(tmp_path_factory.mktemp("toy"), n_train=N_TRAIN, n_eval=N_EVAL, seed=0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    a = generate_toy(tmp_path / "a", n_train=12, n_eval=4, seed=3)
    b = generate_toy(tmp_path / "b", n_train=12, n_eval=4, seed=3)
    assert set(a) == set(b) == {"train", "eval"}
    tree_a, tree_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert tree_a.keys() == tree_b.keys()
    assert tree_a == tree_b


def test_different_seed_gives_different_audio(tmp_path):
    generate_toy(tmp_path / "a", n_train=4, n_eval=0, seed=0)
    generate_toy(tmp_path / "b", n_train=4, n_eval=0, seed=1)
    assert _tree_bytes(tmp_path / "a") != _tree_bytes(tmp_path / "b")


def test_train_and_eval_streams_are_disjoint(toy_set):
    root = toy_set["train"].parent
    train_audio = {p.read_bytes() for p in (root / "audio").glob("toy-train-*.wav")}
    eval_audio = {p.read_bytes() for p in (root / "audio").glob("toy-eval-*.wav")}
    assert train_audio and eval_audio
    assert not train_audio & eval_audio


def test_eval_set_does_not_depend_on_n_train(tmp_path):
    generate_toy(tmp_path / "a", n_train=4, n_eval=6)
    generate_toy(tmp_path / "b", n_train=9, n_eval=6)
    assert (tmp_path / "a" / "eval.jsonl").read_bytes() == (tmp_path / "b" / "eval.jsonl").read_bytes()


def test_rows_load_cleanly_and_fit_the_window(toy_set):
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        result = load_samples(toy_set[split], max_seconds=WINDOW_SECONDS)
        assert len(result.samples) == n
        assert result.skipped == [] and result.clips_too_long == 0
        for s in result.samples:
            assert s.answer in s.choices
            assert s.source and s.category
            assert s.extra["rationale"] == s.extra["rationale"].lower() and s.extra["rationale"]
            for clip in s.audio:
                info = sf.info(clip)
                assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
                assert info.frames <= WINDOW_SECONDS * SAMPLE_RATE


def test_tasks_difficulties_and_answers_are_balanced(toy_set):
    rows = _rows(toy_set["train"])
    tasks = Counter(r["task"] for r in rows)
    assert set(tasks) == {"count", "pitch", "duration", "compare_clips"}
    assert set(tasks.values()) == {N_TRAIN // 4}
    for task in tasks:
        of_task = [r for r in rows if r["task"] == task]
        difficulties = Counter(r["difficulty"] for r in of_task)
        assert difficulties == {"easy": len(of_task) // 2, "hard": len(of_task) // 2}
        answers = Counter(r["answer"] for r in of_task)
        assert set(answers) == set(of_task[0]["choices"])
        assert max(answers.values()) - min(answers.values()) <= 1
    eval_rows = _rows(toy_set["eval"])
    assert {r["task"] for r in eval_rows} == set(tasks)
    assert {r["difficulty"] for r in eval_rows} == {"easy", "hard"}


CHOICES = {
    "count": ["one", "two", "three", "four"],
    "pitch": ["low", "high"],
    "duration": ["short", "long"],
    "compare_clips": ["clip one", "clip two"],
}
CATEGORIES = {"count": "counting", "pitch": "pitch", "duration": "timing", "compare_clips": "pitch"}


def test_choices_and_categories_are_fixed_per_task(toy_set):
    for r in _rows(toy_set["train"]) + _rows(toy_set["eval"]):
        assert r["choices"] == CHOICES[r["task"]]
        assert r["category"] == CATEGORIES[r["task"]]
        assert r["source"] == f"audiothink-toy-{TOY_VERSION}"


def test_compare_clips_items_have_two_clips(toy_set):
    rows = _rows(toy_set["train"])
    for r in rows:
        if r["task"] == "compare_clips":
            assert isinstance(r["audio"], list) and len(r["audio"]) == 2
        else:
            assert isinstance(r["audio"], str)


def test_vocabulary_is_small_and_lowercase(toy_set):
    rows = _rows(toy_set["train"]) + _rows(toy_set["eval"])
    for r in rows:
        for text in (r["question"], r["answer"], r["rationale"], *r["choices"]):
            assert text == text.lower()
    assert len({r["question"] for r in rows}) == 4


# --------------------------------------------------------------------------- the answer is in the audio
# Simple signal "oracles" recover every answer, which shows the labels match the audio.


HIGH_LOW_SPLIT_HZ = 800.0  # every "low" band is below it and every "high" band above
SHORT_LONG_SPLIT_S = 0.5  # every "short" range is below it and every "long" range above


def _segments(wave: np.ndarray) -> list[tuple[int, int]]:
    hop = 160  # 10 ms frames
    energy = np.sqrt(np.convolve(wave**2, np.ones(hop) / hop, mode="same"))[::hop]
    on = np.concatenate([[0], (energy > 0.5 * energy.max()).astype(int), [0]])
    edges = np.diff(on)
    return [(s * hop, e * hop) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _freq(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=1 << 16))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / (1 << 16)


def _tone_seconds(wave: np.ndarray) -> float:
    segs = _segments(wave)
    assert len(segs) == 1, segs
    (start, end), = segs
    return (end - start) / SAMPLE_RATE


def _waves(row: dict, root: Path) -> list[np.ndarray]:
    paths = row["audio"] if isinstance(row["audio"], list) else [row["audio"]]
    return [sf.read(root / p, dtype="float32")[0] for p in paths]


def _oracle(row: dict, root: Path) -> str:
    waves = _waves(row, root)
    task = row["task"]
    if task == "count":
        return ("one", "two", "three", "four")[len(_segments(waves[0])) - 1]
    if task == "pitch":
        return "high" if _freq(waves[0]) > HIGH_LOW_SPLIT_HZ else "low"
    if task == "duration":
        return "long" if _tone_seconds(waves[0]) > SHORT_LONG_SPLIT_S else "short"
    if task == "compare_clips":
        assert len(waves) == 2
        high = [_freq(w) > HIGH_LOW_SPLIT_HZ for w in waves]
        assert high[0] != high[1], "one clip must be high and the other low"
        return "clip one" if high[0] else "clip two"
    raise AssertionError(f"unknown task {task}")


def test_answers_are_recoverable_from_audio(toy_set):
    root = toy_set["train"].parent
    rows = _rows(toy_set["train"]) + _rows(toy_set["eval"])
    wrong = [r["id"] for r in rows if _oracle(r, root) != r["answer"]]
    assert wrong == []


# The measured values fall in the bands the data card documents (with a small tolerance
# for FFT bins and the 10 ms energy frames / fades).
_PITCH_BANDS = {"easy": ((250, 400), (1600, 2500)), "hard": ((600, 720), (880, 1000))}
_DURATION_BANDS = {"easy": ((0.10, 0.20), (0.9, 1.4)), "hard": ((0.35, 0.45), (0.55, 0.70))}


def test_measured_pitch_and_length_match_the_documented_bands(toy_set):
    root = toy_set["train"].parent
    for r in _rows(toy_set["train"]):
        waves = _waves(r, root)
        if r["task"] in ("pitch", "compare_clips"):
            for w in waves:
                f = _freq(w)
                bands = _PITCH_BANDS[r["difficulty"]]
                assert any(lo - 2 <= f <= hi + 2 for lo, hi in bands), (r["id"], f)
                assert 0.28 <= _tone_seconds(w) <= 0.62, r["id"]
        elif r["task"] == "duration":
            lo, hi = _DURATION_BANDS[r["difficulty"]][r["choices"].index(r["answer"])]
            assert lo - 0.03 <= _tone_seconds(waves[0]) <= hi + 0.03, r["id"]
            assert 395 <= _freq(waves[0]) <= 1005, r["id"]


def test_hard_items_are_noisy_and_easy_items_clean(toy_set):
    root = toy_set["train"].parent
    lead = int(0.04 * SAMPLE_RATE)  # every clip starts with at least 0.05 s of "silence"
    for r in _rows(toy_set["train"]):
        for w in _waves(r, root):
            if r["difficulty"] == "easy":
                assert np.all(w[:lead] == 0), r["id"]
            else:
                assert np.std(w[:lead]) > 1e-3, r["id"]


def test_rationale_matches_answer(toy_set):
    for r in _rows(toy_set["train"]):
        assert r["answer"] in r["rationale"]
        # No other choice appears in it, so the rationale never names a wrong answer.
        others = [c for c in r["choices"] if c != r["answer"] and re.search(rf"\b{c}\b", r["rationale"])]
        assert others == [], r


# --------------------------------------------------------------------------- ensure_toy


@pytest.fixture
def small_generate(monkeypatch):
    """Make ensure_toy build a tiny set so its tests stay fast."""
    calls = []
    original = toy.generate_toy

    def fake(out_dir, **kwargs):
        calls.append(out_dir)
        return functools.partial(original, n_train=8, n_eval=4)(out_dir, **kwargs)

    monkeypatch.setattr(toy, "generate_toy", fake)
    return calls


def test_ensure_toy_generates_atomically(tmp_path, small_generate):
    root = tmp_path / "toy"
    paths = ensure_toy(root)
    assert paths == {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}
    assert (root / "DONE").read_text().strip() == TOY_VERSION
    assert len(_rows(paths["train"])) == 8
    assert len(small_generate) == 1 and Path(small_generate[0]) != root  # built elsewhere, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temp dirs left


def test_ensure_toy_does_not_regenerate_when_done(tmp_path, small_generate):
    root = tmp_path / "toy"
    ensure_toy(root)
    before = _tree_bytes(root)
    mtime = (root / "train.jsonl").stat().st_mtime_ns

    assert ensure_toy(root) == {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}
    assert len(small_generate) == 1
    assert _tree_bytes(root) == before
    assert (root / "train.jsonl").stat().st_mtime_ns == mtime


def test_ensure_toy_replaces_an_older_version(tmp_path, small_generate):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "DONE").write_text("v0\n")
    (root / "stale.txt").write_text("old")
    ensure_toy(root)
    assert len(small_generate) == 1
    assert (root / "DONE").read_text().strip() == TOY_VERSION
    assert not (root / "stale.txt").exists()


def test_ensure_toy_fills_an_empty_dir(tmp_path, small_generate):
    root = tmp_path / "toy"
    root.mkdir()
    ensure_toy(root)
    assert (root / "DONE").is_file()


def test_ensure_toy_refuses_a_foreign_dir(tmp_path, small_generate):
    root = tmp_path / "mydata"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mydata"):
        ensure_toy(root)
    assert (root / "precious.txt").read_text() == "keep me"
    assert small_generate == []


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(out_dir, **kwargs):
        Path(out_dir, "audio").mkdir(parents=True)
        Path(out_dir, "train.jsonl").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "generate_toy", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_toy(tmp_path / "toy")
    assert list(tmp_path.iterdir()) == []


def test_generate_toy_rejects_negative_sizes(tmp_path):
    with pytest.raises(ValueError):
        generate_toy(tmp_path, n_train=-1)
