"""audiothink.benchmarks.report: breakdowns by the official rule and order, think statistics, the listening check's
summary."""

from __future__ import annotations

import pytest

from audiothink.benchmarks import load_mmar, load_mmau
from audiothink.benchmarks.report import breakdown_lines, listen_summary, summarise
from tests.helpers import make_mmar_fixture, make_mmau_fixture, prediction_records


def test_breakdowns_follow_the_official_rule_and_order(tmp_path):
    b = load_mmau(make_mmau_fixture(tmp_path))
    preds = [s.answer for s in b.samples]
    preds[0] = "Bird or Dog"  # two choices: wrong
    preds[4] = "(C) FAST."  # letter + text, case and punctuation: right
    preds[8] = "2"  # digit for 'two': wrong
    recs = prediction_records(b, preds)
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
    recs = prediction_records(b, [s.answer for s in b.samples])
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
    real = prediction_records(b, [s.answer for s in b.samples])
    replaced = prediction_records(b, [s.answer if i % 2 else "" for i, s in enumerate(b.samples)])
    lc = listen_summary(b, real, replaced, "noise")
    assert lc["accuracy_real"] == 1.0 and lc["accuracy_replaced"] == 0.5
    assert lc["drop_points"] == pytest.approx(50.0) and lc["answers_changed"] == 0.5
    same = listen_summary(b, real, real, "silence")
    assert same["drop_points"] == 0.0  # a model that does not listen shows no drop


def test_not_comparable_names_what_differs():
    from audiothink.benchmarks.report import not_comparable

    a = {"benchmark": {"kind": "mmau", "version": "v05.15.25", "items": 12, "limited_to": None,
                       "items_sha256": "i" * 64},
         "prompt_sha256": "p" * 64,
         "generation": {"do_sample": False, "temperature": 1.0, "max_new_tokens": 512, "max_audio_seconds": 30}}
    assert not_comparable(a, a) == []
    b = {**a, "benchmark": {**a["benchmark"], "items_sha256": "j" * 64, "limited_to": 5}, "prompt_sha256": "q" * 64,
         "generation": {**a["generation"], "max_new_tokens": 64}}
    reasons = not_comparable(a, b)
    assert len(reasons) == 4 and any("other items" in r for r in reasons) and any("limited_to" in r for r in reasons)
    assert any(r.startswith("prompt:") for r in reasons) and any("max_new_tokens" in r for r in reasons)
    old = {**a, "benchmark": {k: v for k, v in a["benchmark"].items() if k != "items_sha256"}}
    assert any("other items" in r for r in not_comparable(old, old))  # results without the hash: not comparable
