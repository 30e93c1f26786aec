"""audiothink.benchmarks.store: the resumable predictions store."""

from __future__ import annotations

import json

import pytest

from audiothink.benchmarks.store import PredictionStore, StoreMismatch


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


def test_a_mismatch_names_the_setting_that_starts_over(tmp_path):
    """evaluate starts over with eval.restart, curate with curate.restart: the message names the caller's."""
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"_header": {"model": "a"}}) + "\n")
    for key in ("eval.restart", "curate.restart"):
        with pytest.raises(StoreMismatch, match=rf"start over with {key}=true"):
            PredictionStore(path, {"model": "b"}, restart_key=key)
