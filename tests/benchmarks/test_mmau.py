"""audiothink.benchmarks.mmau: the MMAU loader on a fixture in the exact official metadata format, the
test split without answers, and the released files' quirks."""

from __future__ import annotations

from audiothink.benchmarks import load_mmau
from audiothink.benchmarks.report import breakdown_lines, score_items, summarise
from tests.helpers import make_mmau_fixture, prediction_records


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
    correct = score_items(b, prediction_records(b, preds))
    assert correct[0]  # "a bird": every answer word, no word of another choice
    assert not score_items(b, prediction_records(b, ["bird"] + preds[1:]))[0]  # "a" missing: wrong, as officially
    assert not correct[1] and not correct[2] and sum(correct) == 10
    assert b.head(2).quirks == b.quirks[:2]  # eval.limit keeps each item's quirks
