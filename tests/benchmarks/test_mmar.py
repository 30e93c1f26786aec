"""audiothink.benchmarks.mmar: the MMAR loader on both official metadata files, and the release's empty choices."""

from __future__ import annotations

import pytest

from audiothink.benchmarks import load_mmar
from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES
from audiothink.benchmarks.report import score_items
from audiothink.data import render_prompt
from tests.helpers import make_mmar_fixture, prediction_records


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_mmar_loader_reads_both_metadata_files(tmp_path, container):
    b = load_mmar(make_mmar_fixture(tmp_path, container))
    assert len(b) == 14 and b.container == container
    assert {g["modality"] for g in b.groups} == set(MODALITIES)
    assert {g["category"] for g in b.groups} == set(CATEGORIES)
    assert b.samples[0].audio == (str(tmp_path / "audio" / "0000.wav"),)
    assert "thinking" in b.items[0]  # unknown fields kept for the submission file, ignored otherwise


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
    correct = score_items(b, prediction_records(b, preds))
    assert correct[4] and correct[9] and not correct[1] and not correct[6]
    assert sum(correct) == 12
