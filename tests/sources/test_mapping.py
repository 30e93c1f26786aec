"""audiothink.sources.mapping: field maps from the config; mapped rows keep their extras."""

from __future__ import annotations

import pytest

from audiothink.sources.mapping import FieldMap, RowMapping, map_row


def test_field_map_from_config():
    fm = FieldMap.from_config({"question": "prompt_text", "task": None})
    assert (fm.question, fm.task, fm.id) == ("prompt_text", None, "id")
    with pytest.raises(ValueError, match="unknown schema field"):
        FieldMap.from_config({"questions": "q"})
    with pytest.raises(ValueError, match="data.fields.answer"):
        FieldMap.from_config({"answer": None})
    with pytest.raises(ValueError, match="answer_format"):
        RowMapping(answer_format="letter")


def test_map_row_keeps_extras_and_drops_unmapped_schema_names():
    fm = FieldMap(question="q", task=None)
    row, problems, _ = map_row({"id": 5, "audio": "a.wav", "q": "hi", "question": "stale", "task": "t",
                                "choices": ["x", "y"], "answer": 0, "category": ["music"], "note": 1},
                               RowMapping(fields=fm))
    assert problems == []
    assert row == {"id": "5", "audio": "a.wav", "question": "hi", "choices": ["x", "y"], "answer": "x",
                   "category": "music", "note": 1}
