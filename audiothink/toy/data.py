"""The embedded synthetic audio QA set ("toy"), version 3: easy one-step items, hard two-step items.

Sine tones and beeps generated with numpy, so the whole pipeline (data -> prompts -> rollouts -> rewards)
runs on a CPU with no downloads, and so that thinking pays where, and only where, it helps:

* **easy** items ask for one perceptual fact about one clip: ``pitch`` (is the tone low, middle or high?)
  and ``count`` (how many beeps, one to three?). One look answers them; a thought only repeats the fact.
* **hard** items play four clips and ask a two-step question: the first clip names another clip, and the
  answer is that clip's fact. ``pitch_hop``: the first tone's class points to the second, third or fourth
  clip (low, middle, high); is that clip's tone low, middle or high? ``count_hop``: count the first clip's
  beeps and go that many clips on; how many beeps does that clip have? The other three clips hold each
  value once, in a random order, so nothing pooled over the clips says anything about the answer: only
  following the pointer does. Each step is an easy item, and written down the chain is easy ("first two,
  so third, third three, so three"); in one forward pass the toy model does not learn it (see
  ``data_cards/toy.md``).

Every item carries its correct stepwise thought (``rationale``): the first clip's fact, where it points,
that clip's fact, the conclusion; and the facts themselves (``facts``, one per clip), from which
:func:`answer_from_facts` derives the answer.

No shortcuts: every clip's length is drawn from one range (``_CLIP_SECONDS``, within ``WINDOW_SECONDS``)
whatever it holds, and the sound sits at a random offset in silence, so clip length and audio-token count
say nothing about the answer; the question and the number of clips are fixed per task and answers are
balanced within each task. Only the audio decides the answer (``tests/toy/test_data_shortcuts.py``: a lookup on
those features scores chance).

Generation is deterministic: item ``i`` of a split draws from its own random stream seeded by
``(seed, split, i)``, so the same seed gives byte-identical files, the splits never share a stream, and
changing ``n_train`` does not change the eval set. :func:`toy_items` yields items in memory (the warm start
draws its own stream, ``split="warmstart"``); :func:`generate_toy` writes WAVs and metadata.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiothink.audio import SAMPLE_RATE, write_wav

__all__ = ["TOY_VERSION", "WINDOW_SECONDS", "TASKS", "DIFFICULTY", "ToyItem", "toy_items", "answer_from_facts",
           "task_of_question", "task_values", "generate_toy", "ensure_toy", "default_root"]

# v3: clips of content-independent length (no length shortcut); easy one-step items and hard four-clip items
# with stepwise rationales. v2: absolute judgments of unpadded single tones; v1: first-vs-second comparisons.
TOY_VERSION = "v3"
# The tiny model's encoder window, in whole seconds (the feature extractor's chunk length); every clip is
# exactly this long: 100 mel frames, 25 audio tokens.
WINDOW_SECONDS = 1.0
TASKS = ("pitch", "count", "pitch_hop", "count_hop")
# Difficulty is a property of the task: one perceptual step (easy), or a pointer and a second look (hard).
DIFFICULTY = {"pitch": "easy", "count": "easy", "pitch_hop": "hard", "count_hop": "hard"}
SOURCE = f"audiothink-toy-{TOY_VERSION}"
log = logging.getLogger(__name__)

PITCH_CLASSES = ("low", "middle", "high")
# Pitch classes in Hz, far apart (a factor of 2.3 or more between bands): one clip's class is unambiguous.
PITCH_BANDS = {"low": (200.0, 300.0), "middle": (700.0, 1000.0), "high": (2300.0, 3200.0)}
COUNTS = ("one", "two", "three")
HARD_CLIPS = 4  # clips of a hard item: the pointer, then the three clips it can point to
ORDINALS = ("first", "second", "third", "fourth")  # clip names in thoughts: no word shared with a fact

_SPLIT_CODES = {"train": 0, "eval": 1, "warmstart": 2}  # part of the seed: keeps the splits' streams disjoint
_FADE_SECONDS = 0.01  # raised-cosine ramps so tone edges do not click (clicks are extra "beeps")
# Every clip's length is drawn from this range, independently of everything else: a clip's length (and its
# audio-token count) says nothing about its content, and the clips of a prompt do not sit at fixed positions,
# so a model must find a clip by its "Audio k:" marker, not by a fixed distance.
_CLIP_SECONDS = (0.7, 1.0)
_EDGE_SECONDS = 0.05  # the sound starts and ends at least this far from the clip's edges
_TONE_SECONDS = (0.2, 0.4)  # a pitch tone's length
_BEEP_SECONDS = 0.08  # every beep is this long, so the count is the only thing that differs
_GAP_SECONDS = (0.1, 0.18)  # silence between beeps (2.5 to 4.5 audio tokens)
_BEEP_HZ = (500.0, 1500.0)  # a count clip's beeps share one random pitch in this range
_LEVEL = (0.3, 0.6)  # peak level of the sound


@dataclass(frozen=True)
class ToyItem:
    """One generated question: its clips (float32 at 16 kHz, each exactly ``WINDOW_SECONDS``) and fields."""

    task: str
    clips: tuple[np.ndarray, ...]
    question: str
    choices: tuple[str, ...]
    answer: str
    facts: tuple[str, ...]  # one perceptual fact per clip: a pitch class or a count word
    rationale: str  # the correct stepwise thought: the facts, then the conclusion
    category: str

    @property
    def difficulty(self) -> str:
        return DIFFICULTY[self.task]


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


def _place(rng: np.random.Generator, sound: np.ndarray) -> np.ndarray:
    """``sound`` at a random offset in a clip of random length (``_CLIP_SECONDS``), at a random level."""
    total = int(round(rng.uniform(*_CLIP_SECONDS) * SAMPLE_RATE))
    edge = int(round(_EDGE_SECONDS * SAMPLE_RATE))
    room = total - 2 * edge - sound.size
    if room < 0:
        raise AssertionError(f"toy sound of {sound.size / SAMPLE_RATE:.3f} s does not fit the {WINDOW_SECONDS} s window")
    start = edge + int(rng.integers(0, room + 1))
    wave = np.zeros(total, dtype=np.float64)
    wave[start : start + sound.size] = sound * rng.uniform(*_LEVEL)
    return wave.astype(np.float32)


def _pitch_clip(rng: np.random.Generator, pitch_class: str) -> np.ndarray:
    freq = rng.uniform(*PITCH_BANDS[pitch_class])
    return _place(rng, _tone(rng, freq, rng.uniform(*_TONE_SECONDS)))


def _count_clip(rng: np.random.Generator, count_word: str) -> np.ndarray:
    freq = rng.uniform(*_BEEP_HZ)
    parts = []
    for k in range(COUNTS.index(count_word) + 1):
        if k:
            parts.append(_silence(rng.uniform(*_GAP_SECONDS)))
        parts.append(_tone(rng, freq, _BEEP_SECONDS))
    return _place(rng, np.concatenate(parts))


# --------------------------------------------------------------------------- answers and thoughts


def _values(task: str) -> tuple[str, ...]:
    return PITCH_CLASSES if task.startswith("pitch") else COUNTS


def answer_from_facts(task: str, facts: tuple[str, ...] | list[str]) -> str:
    """The gold answer of a ``task`` item whose clips have these facts (what a correct thought concludes).

    >>> answer_from_facts("count_hop", ["two", "one", "three", "two"])  # two beeps: two clips on, the third
    'three'
    >>> answer_from_facts("pitch_hop", ["low", "high", "middle", "low"])  # low points to the second clip
    'high'
    >>> answer_from_facts("pitch", ["low"])
    'low'
    """
    facts = tuple(facts)
    if task not in DIFFICULTY:
        raise ValueError(f"unknown toy task {task!r}")
    values = _values(task)
    if DIFFICULTY[task] == "easy":
        if len(facts) != 1 or facts[0] not in values:
            raise ValueError(f"{task}: expected one of {values}, got {facts}")
        return facts[0]
    if len(facts) != HARD_CLIPS or facts[0] not in values or sorted(facts[1:]) != sorted(values):
        raise ValueError(f"{task}: expected a pointer and the {len(values)} values once each, got {facts}")
    return facts[1 + values.index(facts[0])]


def rationale(task: str, facts: tuple[str, ...] | list[str]) -> str:
    """The correct stepwise thought for an item with these facts, ending "so <answer>".

    >>> rationale("count_hop", ["two", "one", "three", "two"])
    'first two, so third, third three, so three'
    >>> rationale("count", ["one"])
    'first one, so one'
    """
    facts = tuple(facts)
    answer = answer_from_facts(task, facts)
    if DIFFICULTY[task] == "easy":
        return f"first {facts[0]}, so {answer}"
    target = ORDINALS[1 + _values(task).index(facts[0])]
    return f"first {facts[0]}, so {target}, {target} {answer}, so {answer}"


# --------------------------------------------------------------------------- tasks
# Each task gets the rng and the index of the (balanced) combination of facts to produce.

# The hard items' combinations: (pointer value, order of the three values in clips two to four) -> 3 * 6.
_HOP_COMBOS = [(p, perm) for p in range(3) for perm in itertools.permutations(range(3))]

_QUESTIONS = {
    "pitch": "is the tone low, middle or high?",
    "count": "how many beeps are there?",
    "pitch_hop": "the first tone points to a clip (low: second, middle: third, high: fourth). "
                 "is that clip's tone low, middle or high?",
    "count_hop": "count the first clip's beeps and go that many clips on. how many beeps does that clip have?",
}
_CHOICES = {"pitch": PITCH_CLASSES, "count": COUNTS, "pitch_hop": PITCH_CLASSES, "count_hop": COUNTS}
_CATEGORIES = {"pitch": "pitch", "count": "counting", "pitch_hop": "pitch", "count_hop": "counting"}


def task_of_question(question: object) -> str | None:
    """The toy task whose (fixed) question this is, else None: how a reader of the text alone, such as the
    toy logic judge (``audiothink/judge/toy_logic.py``), knows which rule a thought must follow.
    Case and runs of whitespace do not matter.

    >>> task_of_question("How many beeps are there?"), task_of_question("which instrument?")
    ('count', None)
    """
    if not isinstance(question, str):
        return None
    return _TASK_BY_QUESTION.get(" ".join(question.lower().split()))


def task_values(task: str) -> tuple[str, ...]:
    """The facts a clip of ``task`` can hold, which are also its answer options: pitch classes or counts."""
    if task not in DIFFICULTY:
        raise ValueError(f"unknown toy task {task!r}")
    return _values(task)


_TASK_BY_QUESTION = {" ".join(q.lower().split()): task for task, q in _QUESTIONS.items()}


def _facts(task: str, combo: int) -> tuple[str, ...]:
    values = _values(task)
    if DIFFICULTY[task] == "easy":
        return (values[combo],)
    pointer, perm = _HOP_COMBOS[combo]
    return (values[pointer], *(values[k] for k in perm))


def _make_item(task: str, rng: np.random.Generator, combo: int) -> ToyItem:
    facts = _facts(task, combo)
    clip = _pitch_clip if task.startswith("pitch") else _count_clip
    return ToyItem(task=task, clips=tuple(clip(rng, f) for f in facts), question=_QUESTIONS[task],
                   choices=_CHOICES[task], answer=answer_from_facts(task, facts), facts=facts,
                   rationale=rationale(task, facts), category=_CATEGORIES[task])


def _combo_answer(task: str, combo: int) -> str:
    return answer_from_facts(task, _facts(task, combo))


_N_COMBOS = {"pitch": len(PITCH_CLASSES), "count": len(COUNTS), "pitch_hop": len(_HOP_COMBOS),
             "count_hop": len(_HOP_COMBOS)}
# task -> one list of combinations per answer
_BY_ANSWER = {task: [[c for c in range(n) if _combo_answer(task, c) == a] for a in _CHOICES[task]]
              for task, n in _N_COMBOS.items()}


# --------------------------------------------------------------------------- planning & writing


def _plan(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Choose ``(task, combination)`` for ``n`` items.

    Tasks take turns; within a task every answer comes once per round, in a random order, and each answer
    cycles through all of its combinations (shuffled) before repeating one, so answers are balanced even
    for small ``n`` and the facts behind an answer are uniform. The final shuffle removes the order.
    """
    per_task: dict[str, list[int]] = {}
    for task in TASKS:
        groups = _BY_ANSWER[task]
        pools: list[list[int]] = [[] for _ in groups]
        seq: list[int] = []
        while len(seq) < -(-n // len(TASKS)):
            for a in rng.permutation(len(groups)):
                if not pools[a]:
                    pools[a] = [int(c) for c in rng.permutation(groups[a])]
                seq.append(pools[a].pop())
        per_task[task] = seq
    counters = dict.fromkeys(TASKS, 0)
    plan = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        plan.append((task, per_task[task][counters[task]]))
        counters[task] += 1
    return [plan[j] for j in rng.permutation(n)]


def toy_items(split: str, n: int, seed: int = 0) -> Iterator[ToyItem]:
    """Items ``0 .. n-1`` of ``split`` (``train``, ``eval`` or ``warmstart``), generated in memory, in order.

    Which task and facts item ``i`` has comes from the split's plan for ``n`` items (balanced tasks and
    answers); its audio comes from its own stream ``(seed, split, i)``.
    """
    code = _SPLIT_CODES[split]
    plan = _plan(n, np.random.default_rng([seed, code, 2**31]))  # plan stream != item streams
    for i, (task, combo) in enumerate(plan):
        yield _make_item(task, np.random.default_rng([seed, code, i]), combo)


def _write_split(out_dir: Path, split: str, n: int, seed: int) -> Path:
    rows = []
    for i, item in enumerate(toy_items(split, n, seed)):
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
                "task": item.task,
                "category": item.category,
                "difficulty": item.difficulty,
                "source": SOURCE,
                "facts": list(item.facts),
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


def default_root() -> Path:
    """Where the default run keeps the toy set (configs/data/toy.yaml: ``data.root``):
    ``$AUDIOTHINK_CACHE/toy``, else ``~/.cache/audiothink/toy``."""
    return Path(os.environ.get("AUDIOTHINK_CACHE", Path.home() / ".cache" / "audiothink")) / "toy"


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
    log.info(
        "data: building the toy set %s in %s (%s; about 20 s on 2 cores, once)", TOY_VERSION, root,
        "replacing an older version" if old_toy else "first use")
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
