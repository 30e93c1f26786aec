"""Benchmark loaders on fixtures in the exact official metadata formats, submission files, the resumable
predictions store, breakdowns and the listening check's audio. No model here (see test_evaluate*.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from audiothink.audio import SAMPLE_RATE, write_wav
from audiothink.benchmarks import load_benchmark, load_mmar, load_mmau, write_submission
from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES
from audiothink.benchmarks.report import breakdown_lines, listen_summary, summarise
from audiothink.benchmarks.runner import replace_audio
from audiothink.benchmarks.store import PredictionStore, StoreMismatch
from audiothink.data import DataError, Sample

# --------------------------------------------------------------------------- official-format fixtures

# (task, difficulty, category, sub-category, dataset, question, choices, answer): field values as they occur
# in the released MMAU metadata (tasks, difficulties, the two categories and real sub-category names).
_MMAU_ROWS = [
    ("sound", "easy", "Information Extraction", "Sound-Based Event Recognition", "AudioSet",
     "What is the main sound source in the audio?", ["Dog", "Car", "Bird", "Rain"], "Bird"),
    ("sound", "medium", "Reasoning", "Acoustic Source Inference", "AudioSet",
     "Based on the given audio, identify the source of the speaking voice.", ["Man", "Woman", "Child", "Robot"],
     "Man"),
    ("sound", "hard", "Reasoning", "Acoustic Scene Reasoning", "Clotho",
     "Where was this recording most likely made?", ["a kitchen", "a train station", "a forest", "a beach"],
     "a forest"),
    ("sound", "medium", ["Reasoning"], "Temporal Event Reasoning", "AudioSet",
     "Which sound is heard first?", ["a whistle", "a bell", "a horn"], "a bell"),
    ("music", "easy", "Information Extraction", "Rhythm and Tempo Understanding", "MusicCaps",
     "What is the tempo of the piece?", ["slow", "moderate", "fast"], "fast"),
    ("music", "medium", "Reasoning", "Musical Genre Reasoning", "MusicCaps",
     "Which genre does this piece belong to?", ["jazz", "heavy metal", "classical", "reggae"], "jazz"),
    ("music", "hard", "Information Extraction", "Harmony and Chord Progressions", "MusicBench",
     "Which chord is played last?", ["C major", "A minor", "G major", "E minor"], "A minor"),
    ("music", "hard", ["Information Extraction"], "Melodic Structure Interpretation", "MusicBench",
     "How does the melody move?", ["it rises", "it falls", "it stays flat", "it rises then falls"],
     "it rises then falls"),
    ("speech", "easy", "Information Extraction", "Conversational Fact Retrieval", "MELD",
     "How many people are speaking?", ["one", "two", "three", "four"], "two"),
    ("speech", "medium", "Reasoning", "Multi Speaker Role Mapping", "MELD",
     "What is the role of the second speaker?", ["a doctor", "a teacher", "a waiter", "a pilot"], "a waiter"),
    ("speech", "hard", "Information Extraction", "Phonemic Stress Pattern Analysis", "LibriSpeech",
     "Which word is stressed?", ["first", "second", "third"], "second"),
    ("speech", "hard", "Reasoning", "Emotion Flip Detection", "IEMOCAP",
     "How does the speaker's emotion change?", ["happy to sad", "sad to happy", "calm to angry", "no change"],
     "calm to angry"),
]

# MMAR: the 7 modalities and 4 layers of the release; sub-category names as free strings.
_MMAR_SUBS = {"Signal Layer": "Acoustic Quality Analysis", "Perception Layer": "Counting and Statistics",
              "Semantic Layer": "Content Analysis", "Cultural Layer": "Professional Knowledge"}


def _tone(path: Path, freq: float, seconds: float) -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    write_wav(path, 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32))


def make_mmau_fixture(root: Path, name: str = "mmau-test-mini.json", *, with_answers: bool = True) -> Path:
    """``root/<name>`` (a JSON list, exactly the released fields) and ``root/test-mini-audios/<id>.wav``."""
    items = []
    for k, (task, diff, cat, sub, dataset, q, choices, answer) in enumerate(_MMAU_ROWS):
        rid = str(uuid.UUID(int=1000 + k))
        _tone(root / "test-mini-audios" / f"{rid}.wav", 300 + 90 * k, 0.4 + 0.1 * (k % 4))
        item = {"id": rid, "audio_id": f"./test-mini-audios/{rid}.wav", "question": q, "choices": choices,
                "answer": answer, "dataset": dataset, "task": task, "split": "test-mini", "category": cat,
                "sub-category": sub, "difficulty": diff}
        if not with_answers:
            item.pop("answer")
            item["split"] = "test"
        items.append(item)
    path = root / name
    path.write_text(json.dumps(items, indent=4), encoding="utf-8")
    return path


def make_mmar_fixture(root: Path, container: str = "jsonl") -> Path:
    """``root/MMAR-meta.jsonl`` (or ``.json``, a list) and ``root/audio/<id>.wav``: 14 items, every modality
    twice, every layer; the newer copies' extra fields (thinking, cue, rubric) on some items."""
    items = []
    for k in range(14):
        modality = MODALITIES[k % 7]
        category = CATEGORIES[k % 4]
        rid = f"{k:04d}"
        _tone(root / "audio" / f"{rid}.wav", 250 + 70 * k, 0.3 + 0.05 * k)
        item = {"id": rid, "audio_path": f"./audio/{rid}.wav", "question": f"Question {k} about the clip?",
                "choices": ["clip one", "clip two", "the flute", "the bass drum"][: 2 + k % 3],
                "answer": "clip two" if k % 2 else "clip one", "modality": modality, "category": category,
                "sub-category": _MMAR_SUBS[category], "language": None if k % 3 else "en",
                "source": "YouTube", "url": f"https://www.youtube.com/watch?v=fixture{k}",
                "timestamp": "00:01:00-00:01:10"}
        if k % 5 == 0:
            item.update({"thinking": "a hidden rationale", "cue": "a cue", "rubric": ["step 1"]})
        items.append(item)
    if container == "jsonl":
        path = root / "MMAR-meta.jsonl"
        path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    else:
        path = root / "MMAR-meta.json"
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loaders


def test_mmau_loader_reads_the_official_format(tmp_path):
    meta = make_mmau_fixture(tmp_path)
    b = load_mmau(meta, name="mmau_test_mini")
    assert len(b) == 12 and b.kind == "mmau" and b.container == "json"
    assert b.dimensions == ("task", "difficulty", "sub-category")
    s = b.samples[3]
    assert s.audio == (str(tmp_path / "test-mini-audios" / f"{b.items[3]['id']}.wav"),)
    assert s.category == "Reasoning"  # a one-element list in the metadata
    assert b.items[3]["category"] == ["Reasoning"]  # the original item is untouched
    assert {g["task"] for g in b.groups} == {"sound", "music", "speech"}
    assert {g["difficulty"] for g in b.groups} == {"easy", "medium", "hard"}
    assert all(b.scored) and b.version.startswith("unspecified")
    assert load_mmau(make_mmau_fixture(tmp_path, "mmau-test-mini-v05.15.25.json")).version == "v05.15.25"


def test_mmau_test_split_without_answers_is_loaded_unscored(tmp_path):
    b = load_mmau(make_mmau_fixture(tmp_path, "mmau-test.json", with_answers=False))
    assert not any(b.scored)
    s = summarise(b, {k: {"prediction": "x", "thinks": False, "mode": "malformed"} for k in b.keys})
    assert s["overall"]["accuracy"] is None and s["overall"]["n"] == 12
    assert "answers withheld" in breakdown_lines(b, s)[0]


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_mmar_loader_reads_both_metadata_files(tmp_path, container):
    b = load_mmar(make_mmar_fixture(tmp_path, container))
    assert len(b) == 14 and b.container == container
    assert {g["modality"] for g in b.groups} == set(MODALITIES)
    assert {g["category"] for g in b.groups} == set(CATEGORIES)
    assert b.samples[0].audio == (str(tmp_path / "audio" / "0000.wav"),)
    assert "thinking" in b.items[0]  # unknown fields kept for the submission file, ignored otherwise


def test_data_root_moves_the_audio(tmp_path):
    meta = make_mmar_fixture(tmp_path / "meta")
    b = load_benchmark("mmar", meta, tmp_path / "elsewhere")
    assert b.samples[0].audio[0] == str(tmp_path / "elsewhere" / "audio" / "0000.wav")


def test_every_bad_item_is_listed_at_once(tmp_path):
    items = json.loads(make_mmau_fixture(tmp_path).read_text())
    del items[0]["question"]
    items[1]["choices"] = "Man, Woman"
    items[2]["task"] = 3
    items[3]["id"] = ""
    (tmp_path / "bad.json").write_text(json.dumps(items))
    with pytest.raises(DataError) as e:
        load_mmau(tmp_path / "bad.json")
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert f"bad.json:0 id={items[0]['id']}: question: missing" in msg
    assert "bad.json:1" in msg and "choices: expected a list" in msg
    assert "bad.json:2" in msg and "task: expected a string" in msg
    assert "bad.json:3 id=?: id: must not be empty" in msg


@pytest.mark.parametrize("content,match", [
    (None, "metadata file not found"),
    ("{not json", "invalid JSON"),
    ('{"id": 1}', "expected a JSON list"),
    ("[]", "no items"),
])
def test_unreadable_metadata(tmp_path, content, match):
    p = tmp_path / "m.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError, match=match):
        load_mmau(p)


def test_directory_instead_of_metadata(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_mmar(tmp_path)


# --------------------------------------------------------------------------- submission files


def _records(b, predictions, thinks=None):
    thinks = thinks or {}
    return {k: {"key": k, "prediction": p, "think": thinks.get(k), "thinks": k in thinks,
                "mode": "no_think"} for k, p in zip(b.keys, predictions)}


def test_mmau_submission_has_both_prediction_fields(tmp_path):
    b = load_mmau(make_mmau_fixture(tmp_path))
    recs = _records(b, [s.answer for s in b.samples])
    del recs[b.keys[5]]  # a missing prediction becomes "" (wrong), never a missing item
    out = write_submission(b, recs, tmp_path / "sub.json")
    rows = json.loads(out.read_text())
    assert len(rows) == 12
    for item, row in zip(b.items, rows):
        assert {k: row[k] for k in item} == item  # original fields and values, in order
        assert set(row) - set(item) == {"model_output", "model_prediction"}
    assert rows[0]["model_output"] == rows[0]["model_prediction"] == b.samples[0].answer
    assert rows[5]["model_output"] == ""


def test_mmar_submission_keeps_the_container_and_adds_thinking(tmp_path):
    b = load_mmar(make_mmar_fixture(tmp_path, "jsonl"))
    recs = _records(b, ["clip one"] * 14, thinks={b.keys[1]: "the second clip is louder"})
    out = write_submission(b, recs, tmp_path / "sub.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["answer_prediction"] == rows[0]["model_prediction"] == "clip one"
    assert "thinking_prediction" not in rows[0]
    assert rows[1]["thinking_prediction"] == "the second clip is louder"
    assert rows[0]["thinking"] == "a hidden rationale"  # newer copies' fields survive


# --------------------------------------------------------------------------- breakdowns


def test_breakdowns_follow_the_official_rule_and_order(tmp_path):
    b = load_mmau(make_mmau_fixture(tmp_path))
    preds = [s.answer for s in b.samples]
    preds[0] = "Bird or Dog"  # two choices: wrong
    preds[4] = "(C) FAST."  # letter + text, case and punctuation: right
    preds[8] = "2"  # digit for 'two': wrong
    recs = _records(b, preds)
    s = summarise(b, recs)
    assert s["overall"]["correct"] == 10 and s["overall"]["n_scored"] == 12
    assert list(s["by"]["task"]) == ["sound", "music", "speech"]
    assert list(s["by"]["difficulty"]) == ["easy", "medium", "hard"]
    lines = breakdown_lines(b, s)
    assert "sound : 75.00% over 4 samples" in lines
    assert "easy : 33.33% over 3 samples" in lines
    assert lines[-1] == "Total : 83.33% over 12 samples"
    assert "[sub-category]" in lines


def test_think_statistics(tmp_path):
    b = load_mmar(make_mmar_fixture(tmp_path))
    recs = _records(b, [s.answer for s in b.samples])
    for k in b.keys[:4]:
        recs[k].update(thinks=True, think_tokens=10, mode="think")
    recs[b.keys[5]]["mode"] = "malformed"
    o = summarise(b, recs)["overall"]
    assert o["think_rate"] == pytest.approx(4 / 14)
    assert o["mean_think_tokens"] == 10
    assert o["format_failure_rate"] == pytest.approx(1 / 14)
    assert o["accuracy_think"] == 1.0 and o["accuracy_no_think"] == 1.0


def test_listen_summary_drop(tmp_path):
    b = load_mmar(make_mmar_fixture(tmp_path))
    real = _records(b, [s.answer for s in b.samples])
    replaced = _records(b, [s.answer if i % 2 else "" for i, s in enumerate(b.samples)])
    lc = listen_summary(b, real, replaced, "noise")
    assert lc["accuracy_real"] == 1.0 and lc["accuracy_replaced"] == 0.5
    assert lc["drop_points"] == pytest.approx(50.0) and lc["answers_changed"] == 0.5
    same = listen_summary(b, real, real, "silence")
    assert same["drop_points"] == 0.0  # a model that does not listen shows no drop


# --------------------------------------------------------------------------- listening check audio


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


# --------------------------------------------------------------------------- predictions store


def test_store_appends_resumes_and_drops_a_torn_line(tmp_path):
    p = tmp_path / "predictions.jsonl"
    st = PredictionStore(p, {"model": "m"})
    st.append([{"key": "a", "prediction": "x", "error": None}, {"key": "b", "prediction": "", "error": "boom"}])
    with p.open("a") as f:
        f.write('{"key": "c", "predic')  # a write cut short by a kill
    st2 = PredictionStore(p, {"model": "m"})
    assert st2.dropped_partial_line and set(st2.records) == {"a", "b"}
    assert st2.done("a") and not st2.done("b") and st2.done("b", retry_failed=False) and not st2.done("c")
    st2.append([{"key": "b", "prediction": "y", "error": None}])
    st3 = PredictionStore(p, {"model": "m"})
    assert st3.records["b"]["prediction"] == "y" and st3.done("b")
    assert all(json.loads(line) for line in p.read_text().splitlines())


def test_store_refuses_other_settings(tmp_path):
    p = tmp_path / "predictions.jsonl"
    PredictionStore(p, {"model": "m", "prompt": "p1"}).append([{"key": "a", "prediction": "x", "error": None}])
    with pytest.raises(StoreMismatch, match="prompt: 'p1' -> 'p2'"):
        PredictionStore(p, {"model": "m", "prompt": "p2"})
    fresh = PredictionStore(p, {"model": "m", "prompt": "p2"}, restart=True)
    assert fresh.records == {}
