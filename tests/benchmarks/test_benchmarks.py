"""Benchmark loaders on fixtures in the exact official metadata formats, submission files, the resumable
predictions store, breakdowns and the listening check's audio. No model here (see test_evaluate*.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audiothink.benchmarks import load_benchmark, load_mmar, load_mmau, write_submission
from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES
from audiothink.benchmarks.report import breakdown_lines, listen_summary, score_items, summarise
from audiothink.benchmarks.runner import replace_audio
from audiothink.benchmarks.store import PredictionStore, StoreMismatch
from audiothink.data import DataError, Sample, render_prompt
from tests.helpers import make_mmar_fixture, make_mmau_fixture

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


# --------------------------------------------------------------------------- released files' quirks


def test_mmar_empty_choices_load_score_and_are_counted(tmp_path):
    """MMAR's 4 items whose choice list holds "" (the official script scores them normally) load, keep the
    released item for scoring, leave the empty choice out of the prompt, and are counted by kind and id."""
    b = load_mmar(make_mmar_fixture(tmp_path, quirks=True))  # a DataError before: "every choice must be ..."
    assert len(b) == 14
    from audiothink.benchmarks.base import quirk_summary

    q = quirk_summary(b)
    assert set(q) == {"empty_choice", "padded_text"}
    assert q["empty_choice"]["items"] == 3 and q["empty_choice"]["ids"] == ["0001", "0004", "0006"]
    assert q["padded_text"]["ids"] == ["0009"] and "empty" in q["empty_choice"]["what"]
    s = b.samples[4]
    assert s.choices == ("clip one", "clip two", "the flute", "the bass drum")  # what the model is shown
    assert b.items[4]["choices"][-1] == ""  # the released item, untouched, is what is scored and submitted
    assert b.samples[6].choices == ("clip one", "clip two") and b.samples[9].answer == "clip two"
    # the prompt lists the real options, lettered in order; no empty option line
    prompt = render_prompt(s, "{question}\n{choices}\nAnswer with the option text.")
    assert prompt.splitlines()[1:6] == ["(A) clip one", "(B) clip two", "(C) the flute", "(D) the bass drum",
                                        "Answer with the option text."]
    # scored by the official rule on the released choices: the empty one changes nothing
    preds = [s.answer for s in b.samples]
    preds[1], preds[6] = "the flute", "clip one and clip two"
    correct = score_items(b, _records(b, preds))
    assert correct[4] and correct[9] and not correct[1] and not correct[6]
    assert sum(correct) == 12


def test_whitespace_only_choice_is_an_empty_choice_and_nonstrings_still_fail(tmp_path):
    items = [json.loads(x) for x in make_mmar_fixture(tmp_path).read_text().splitlines()]
    items[0]["choices"] = ["clip one", " \t"]
    items[1]["choices"] = ["clip one", None]  # the official scorer fails on this: so do we
    items[2]["choices"] = ["", "  "]  # nothing to choose from
    path = tmp_path / "edited.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    with pytest.raises(DataError) as e:
        load_mmar(path)
    msg = str(e.value)
    assert "2 problem(s)" in msg and "edited.jsonl:0" not in msg
    assert "edited.jsonl:2 id=0001: choices: every choice must be a string" in msg
    assert "edited.jsonl:3 id=0002: choices: every choice is empty" in msg
    del items[1:3]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    b = load_mmar(path)
    assert b.quirks[0] == ("empty_choice",) and b.samples[0].choices == ("clip one",)


def test_mmau_release_quirks_are_accepted_scored_and_counted(tmp_path):
    """An answer missing from its choices, repeated and same-word choices, a padded choice, a repeated id,
    `category` as a one-element list: each loads, scores by the official rule, and is counted."""
    b = load_mmau(make_mmau_fixture(tmp_path, quirks=True))
    assert len(b) == 12
    from audiothink.benchmarks.base import quirk_summary

    q = quirk_summary(b)
    ids = [item["id"] for item in b.items]
    assert {k: v["items"] for k, v in q.items()} == {
        "answer_not_in_choices": 1, "duplicate_choices": 1, "same_word_choices": 2, "label_as_list": 2,
        "padded_text": 1, "repeated_id": 1}
    assert q["answer_not_in_choices"]["ids"] == [ids[0]]
    assert q["same_word_choices"]["ids"] == [ids[2], ids[11]]  # row 11: "happy to sad" / "sad to happy"
    assert q["label_as_list"]["ids"] == [ids[3], ids[7]]  # the released 13 items' shape; already tolerated
    assert q["repeated_id"]["ids"] == [ids[9]] and b.keys[9] == f"{ids[9]}#2"
    assert b.samples[0].answer == "a bird" and b.scored[0]
    preds = [s.answer for s in b.samples]
    preds[1] = "Woman"
    preds[2] = "from far to near"  # a wrong choice (its words are not the answer's)
    correct = score_items(b, _records(b, preds))
    assert correct[0]  # "a bird": every answer word, no word of another choice
    assert not score_items(b, _records(b, ["bird"] + preds[1:]))[0]  # "a" missing: wrong, as officially
    assert not correct[1] and not correct[2] and sum(correct) == 10
    assert b.head(2).quirks == b.quirks[:2]  # eval.limit keeps each item's quirks


def test_official_files_without_quirks_report_none(tmp_path):
    from audiothink.benchmarks.base import quirk_summary

    b = load_mmar(make_mmar_fixture(tmp_path))
    assert quirk_summary(b) == {}


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
    # on every item: the official rubric script skips items without it; "" for a direct answer
    assert all("thinking_prediction" in row for row in rows) and rows[0]["thinking_prediction"] == ""
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
