"""audiothink.benchmarks.base: what every loader shares (choices, quirks, bad items, unreadable metadata) and the
submission files."""

from __future__ import annotations

import json

import pytest

from audiothink.benchmarks import load_mmar, load_mmau, write_submission
from audiothink.data import DataError
from tests.helpers import make_mmar_fixture, make_mmau_fixture, prediction_records


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


def test_official_files_without_quirks_report_none(tmp_path):
    from audiothink.benchmarks.base import quirk_summary

    b = load_mmar(make_mmar_fixture(tmp_path))
    assert quirk_summary(b) == {}


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


def test_mmau_submission_has_both_prediction_fields(tmp_path):
    b = load_mmau(make_mmau_fixture(tmp_path))
    recs = prediction_records(b, [s.answer for s in b.samples])
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
    recs = prediction_records(b, ["clip one"] * 14, thinks={b.keys[1]: "the second clip is louder"})
    out = write_submission(b, recs, tmp_path / "sub.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["answer_prediction"] == rows[0]["model_prediction"] == "clip one"
    # on every item: the official rubric script skips items without it; "" for a direct answer
    assert all("thinking_prediction" in row for row in rows) and rows[0]["thinking_prediction"] == ""
    assert rows[1]["thinking_prediction"] == "the second clip is louder"
    assert rows[0]["thinking"] == "a hidden rationale"  # newer copies' fields survive
