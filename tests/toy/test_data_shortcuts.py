"""No toy answer can be read off anything but the audio content.

A shortcut baseline sees only what a model could read without listening: each clip's length (samples), its
audio-token count (as the toy processor expands the prompt), the number of clips, and the question text. Two
baselines are fitted on the train split and scored on the held-out split: a lookup table (the majority
answer of each distinct feature tuple) and a nearest-neighbour classifier on the numeric features plus the
question. On every task both must stay within 5 points of chance (1 / number of choices).

Version 2 of the toy failed this: its clips were not padded, so more beeps meant a longer clip and more
audio tokens, and a lookup from the token count alone scored 99 % on counting.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiothink.toy.data import TASKS, generate_toy


@pytest.fixture(scope="module")
def split_rows(tmp_path_factory, toy_model_dir) -> dict[str, list[dict]]:
    """Train rows (the default train size) and 1,200 held-out rows (300 per task: a baseline at chance lands
    within +-5 points of it with ~93 % probability per task, where 75 per task would give only ~65 %), each
    with its shortcut features. Generation is seeded, so the figures are fixed."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(toy_model_dir)
    root = tmp_path_factory.mktemp("toy_shortcuts")
    paths = generate_toy(root, n_train=2000, n_eval=1200, seed=0)
    audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    out = {}
    for split, path in paths.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        waves, texts = [], []
        for r in rows:
            clips = r["audio"] if isinstance(r["audio"], list) else [r["audio"]]
            r_waves = [sf.read(root / c, dtype="float32")[0] for c in clips]
            waves += r_waves
            texts.append("".join("<|audio_bos|><|AUDIO|><|audio_eos|>" for _ in r_waves) + r["question"])
            r["features"] = {"lengths": tuple(len(w) for w in r_waves), "clips": len(r_waves),
                             "question": r["question"]}
        # the prompts as the processor expands them for the model: one <|AUDIO|> per 40 ms of clip
        ids = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="np", padding=True)["input_ids"]
        for r, row_ids in zip(rows, ids, strict=True):
            r["features"]["audio_tokens"] = int((row_ids == audio_id).sum())
        out[split] = rows
    return out


# What the lookup keys on, most specific first: each clip's length in audio tokens (40 ms), the prompt's
# audio-token count, the clip count and the question; the question alone.
_KEYS = (
    lambda f: (tuple(n // 640 for n in f["lengths"]), f["audio_tokens"], f["clips"], f["question"]),
    lambda f: (f["audio_tokens"], f["clips"], f["question"]),
    lambda f: (f["question"],),
)


def lookup_baseline(train: list[dict], test: list[dict]) -> list[str]:
    """The majority training answer of the most specific feature tuple seen in training (_KEYS)."""
    tables: list[dict[tuple, Counter]] = [{} for _ in _KEYS]
    for r in train:
        for key, table in zip(_KEYS, tables):
            table.setdefault(key(r["features"]), Counter())[r["answer"]] += 1
    preds = []
    for r in test:
        counts = next(t[k(r["features"])] for k, t in zip(_KEYS, tables) if k(r["features"]) in t)
        preds.append(counts.most_common(1)[0][0])
    return preds


def nearest_neighbour_baseline(train: list[dict], test: list[dict], k: int = 5) -> list[str]:
    """k-NN (majority of the k nearest training items of the same question) on total length, mean clip
    length, audio-token count and clip count, standardised."""

    def vec(r):
        f = r["features"]
        return np.array([sum(f["lengths"]), np.mean(f["lengths"]), f["audio_tokens"], f["clips"]], dtype=float)

    x_train = np.stack([vec(r) for r in train])
    scale = x_train.std(0)
    scale[scale == 0] = 1.0
    preds = []
    for r in test:
        same = [i for i, t in enumerate(train) if t["question"] == r["question"]]
        d = np.abs((x_train[same] - vec(r)) / scale).sum(1)
        nearest = [same[i] for i in np.argsort(d, kind="stable")[:k]]
        preds.append(Counter(train[i]["answer"] for i in nearest).most_common(1)[0][0])
    return preds


@pytest.mark.parametrize("baseline", [lookup_baseline, nearest_neighbour_baseline])
def test_shortcut_baselines_are_at_chance_on_every_task(split_rows, baseline):
    train, test = split_rows["train"], split_rows["eval"]
    preds = baseline(train, test)
    for task in TASKS:
        idx = [i for i, r in enumerate(test) if r["task"] == task]
        assert len(idx) == 300
        accuracy = sum(preds[i] == test[i]["answer"] for i in idx) / len(idx)
        chance = 1 / len(test[idx[0]]["choices"])
        assert abs(accuracy - chance) <= 0.05, f"{baseline.__name__}: {task} {accuracy:.1%} vs chance {chance:.1%}"


def test_the_baselines_do_find_a_shortcut_when_there_is_one(split_rows):
    """The baselines are not blind: with v2's leak put back (a count clip longer by each beep), they score far
    above chance on counting."""
    train, test = split_rows["train"], split_rows["eval"]
    leaky = {}
    for split, rows in (("train", train), ("eval", test)):
        leaky[split] = []
        for r in rows:
            r2 = dict(r, features=dict(r["features"]))
            # as in v2's unpadded count clips: each beep and gap (~0.25 s, 6 audio tokens) lengthens the clip
            if r["task"] == "count":
                extra = ("one", "two", "three").index(r["answer"])
                r2["features"]["lengths"] = tuple(n + 4000 * extra for n in r["features"]["lengths"])
                r2["features"]["audio_tokens"] += 6 * extra
            leaky[split].append(r2)
    for baseline in (lookup_baseline, nearest_neighbour_baseline):
        preds = baseline(leaky["train"], leaky["eval"])
        idx = [i for i, r in enumerate(test) if r["task"] == "count"]
        assert sum(preds[i] == test[i]["answer"] for i in idx) / len(idx) > 0.8, baseline.__name__  # chance: 1/3
