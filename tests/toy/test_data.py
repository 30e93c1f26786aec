"""Tests for the synthetic toy set: schema, determinism, fixed clip lengths, rationales that reach the gold
answer, and that the facts are audible."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiothink.audio import SAMPLE_RATE
from audiothink.scoring import string_match, tokenize
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
            assert len(s.extra["facts"]) == len(s.audio)
            for clip in s.audio:
                info = sf.info(clip)
                assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
                # every clip's length is drawn from one range whatever it holds (tests/toy/test_data_shortcuts.py
                # checks that it says nothing), and fits the window
                lo, hi = toy._CLIP_SECONDS
                assert round(lo * SAMPLE_RATE) <= info.frames <= round(hi * SAMPLE_RATE) <= WINDOW_SECONDS * SAMPLE_RATE


def test_tasks_difficulties_and_answers_are_balanced(toy_set):
    rows = _rows(toy_set["train"])
    tasks = Counter(r["task"] for r in rows)
    assert set(tasks) == set(toy.TASKS)
    assert set(tasks.values()) == {N_TRAIN // 4}
    assert Counter(r["difficulty"] for r in rows) == {"easy": N_TRAIN // 2, "hard": N_TRAIN // 2}
    for task in tasks:
        of_task = [r for r in rows if r["task"] == task]
        assert {r["difficulty"] for r in of_task} == {toy.DIFFICULTY[task]}
        answers = Counter(r["answer"] for r in of_task)
        assert set(answers) == set(of_task[0]["choices"])
        assert max(answers.values()) - min(answers.values()) <= 2
    eval_rows = _rows(toy_set["eval"])
    assert {r["task"] for r in eval_rows} == set(tasks)
    assert {r["difficulty"] for r in eval_rows} == {"easy", "hard"}


CHOICES = {
    "pitch": ["low", "middle", "high"],
    "count": ["one", "two", "three"],
    "pitch_hop": ["low", "middle", "high"],
    "count_hop": ["one", "two", "three"],
}
CATEGORIES = {"pitch": "pitch", "count": "counting", "pitch_hop": "pitch", "count_hop": "counting"}
CLIPS = {"pitch": 1, "count": 1, "pitch_hop": 4, "count_hop": 4}


def test_choices_categories_and_clips_are_fixed_per_task(toy_set):
    for r in _rows(toy_set["train"]) + _rows(toy_set["eval"]):
        assert r["choices"] == CHOICES[r["task"]]
        assert r["category"] == CATEGORIES[r["task"]]
        assert r["source"] == f"audiothink-toy-{TOY_VERSION}"
        audio = r["audio"] if isinstance(r["audio"], list) else [r["audio"]]
        assert len(audio) == CLIPS[r["task"]]


def test_choices_score_apart_under_the_official_rule(toy_set):
    """Each choice's word set differs from the others', so the official string match tells them apart: the
    gold text alone scores, every other choice fails."""
    for r in _rows(toy_set["train"]):
        words = [frozenset(tokenize(c)) for c in r["choices"]]
        assert len(set(words)) == len(words)
        assert string_match(r["answer"], r["answer"], r["choices"])
        assert not any(string_match(r["answer"], c, r["choices"]) for c in r["choices"] if c != r["answer"])


def test_vocabulary_is_small_and_lowercase(toy_set):
    rows = _rows(toy_set["train"]) + _rows(toy_set["eval"])
    for r in rows:
        for text in (r["question"], r["answer"], r["rationale"], *r["choices"], *r["facts"]):
            assert text == text.lower()
    assert len({r["question"] for r in rows}) == 4


# --------------------------------------------------------------------------- rationales


def test_every_rationale_reaches_the_gold_answer(toy_set):
    """The stepwise thought of every item: its facts are the item's facts, the total it writes is their sum,
    and what it concludes is the gold answer, also as the rule judge reads the conclusion."""
    from audiothink.judge.rule import stated_option

    rows = _rows(toy_set["train"]) + _rows(toy_set["eval"])
    for r in rows:
        facts, thought = r["facts"], r["rationale"]
        assert toy.answer_from_facts(r["task"], facts) == r["answer"], r["id"]
        assert thought == toy.rationale(r["task"], facts)
        if r["difficulty"] == "hard":
            # "first two, so third, third three, so three": the pointer, where it points, that clip, the answer
            steps = re.fullmatch(r"first (\w+), so (\w+), (\w+) (\w+), so (\w+)", thought)
            assert steps, thought
            pointer, target, target_again, fact, answer = steps.groups()
            values = CHOICES[r["task"]]
            assert pointer == facts[0] and target == target_again
            assert toy.ORDINALS.index(target) == 1 + values.index(pointer)  # low/one -> second, ...
            assert fact == facts[toy.ORDINALS.index(target)]  # the fact of the clip pointed to
            assert answer == fact == r["answer"]
        else:
            assert thought == f"first {facts[0]}, so {r['answer']}" and facts[0] == r["answer"]
        # the rule judge (reward=full's consistency) finds the gold option as the thought's conclusion
        assert stated_option(thought, r["choices"]) == r["choices"].index(r["answer"]), thought


def test_answer_from_facts_rejects_what_is_not_an_item():
    with pytest.raises(ValueError):
        toy.answer_from_facts("count_hop", ["two", "one"])
    with pytest.raises(ValueError):
        toy.answer_from_facts("count_hop", ["two", "one", "one", "three"])  # clips 2-4 hold each value once
    with pytest.raises(ValueError):
        toy.answer_from_facts("pitch_hop", ["two", "low", "middle", "high"])
    with pytest.raises(ValueError):
        toy.answer_from_facts("duration", ["long"])


def _conditional_answers(task: str, view) -> dict:
    """P(answer | view(facts)) over the planned combinations (answers equally likely, combinations of an
    answer equally likely), as Fraction counts per view value."""
    groups = toy._BY_ANSWER[task]
    out: dict = {}
    for group in groups:
        for combo in group:
            facts = toy._facts(task, combo)
            out.setdefault(view(facts), Counter())[toy.answer_from_facts(task, facts)] += Fraction(1, len(group))
    return out


@pytest.mark.parametrize("task", ["pitch_hop", "count_hop"])
def test_only_following_the_pointer_tells_a_hard_answer(task):
    """Whatever a single forward pass could pool (the bag of facts over all clips, the pointer clip alone, the
    three target clips without the pointer, the pointer with the bag) leaves every answer equally likely;
    the pointer and the target clips in order decide it."""
    views = {
        "bag": lambda f: tuple(sorted(f)),
        "pointer": lambda f: f[0],
        "targets in order": lambda f: f[1:],
        "pointer and bag": lambda f: (f[0], tuple(sorted(f))),
        "one target clip": lambda f: f[2],
    }
    for name, view in views.items():
        for value, answers in _conditional_answers(task, view).items():
            assert len(answers) == 3 and len(set(answers.values())) == 1, (task, name, value, answers)
    for value, answers in _conditional_answers(task, lambda f: f).items():
        assert len(answers) == 1


def test_generated_hard_items_are_planned_and_balanced():
    items = [it for it in toy.toy_items("train", 1200) if it.difficulty == "hard"]
    for task in ("pitch_hop", "count_hop"):
        of_task = [it for it in items if it.task == task]
        assert {it.facts for it in of_task} == {toy._facts(task, c) for c in range(len(toy._HOP_COMBOS))}
        answers = Counter(it.answer for it in of_task)
        assert max(answers.values()) - min(answers.values()) <= 1


# --------------------------------------------------------------------------- the answer is in the audio
# Simple signal "oracles" recover every fact, which shows the labels match the audio.


def _segments(wave: np.ndarray) -> list[tuple[int, int]]:
    hop = 160  # 10 ms frames
    energy = np.sqrt(np.convolve(wave**2, np.ones(hop) / hop, mode="same"))[::hop]
    on = np.concatenate([[0], (energy > 0.5 * energy.max()).astype(int), [0]])
    edges = np.diff(on)
    return [(s * hop, e * hop) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _freq(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=1 << 16))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / (1 << 16)


def _waves(row: dict, root: Path) -> list[np.ndarray]:
    paths = row["audio"] if isinstance(row["audio"], list) else [row["audio"]]
    return [sf.read(root / p, dtype="float32")[0] for p in paths]


def _heard_fact(task: str, wave: np.ndarray) -> str:
    if task.startswith("pitch"):
        f = _freq(wave)
        return next(name for name, (lo, hi) in toy.PITCH_BANDS.items() if lo - 2 <= f <= hi + 2)
    return toy.COUNTS[len(_segments(wave)) - 1]


def test_facts_are_recoverable_from_audio(toy_set):
    root = toy_set["train"].parent
    for r in _rows(toy_set["train"]) + _rows(toy_set["eval"]):
        heard = [_heard_fact(r["task"], w) for w in _waves(r, root)]
        assert heard == r["facts"], r["id"]
        assert toy.answer_from_facts(r["task"], heard) == r["answer"]


def test_sounds_sit_at_random_offsets_in_silence(toy_set):
    root = toy_set["train"].parent
    starts = []
    for r in _rows(toy_set["train"]):
        for w in _waves(r, root):
            segs = _segments(w)
            starts.append(segs[0][0] / SAMPLE_RATE)
            edge = int(0.04 * SAMPLE_RATE)
            assert np.all(w[:edge] == 0) and np.all(w[-edge:] == 0), r["id"]
    assert min(starts) < 0.15 and max(starts) > 0.3  # not one fixed position


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


@pytest.mark.parametrize("old", ["v1", "v2"])
def test_ensure_toy_replaces_an_older_version(tmp_path, small_generate, old):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "DONE").write_text(f"{old}\n")
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
