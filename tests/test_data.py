"""Tests for audiothink.data: schema validation, error reporting, prompts and datasets."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from audiothink.audio import SAMPLE_RATE, write_wav
from audiothink.data import (
    DataError,
    LoadResult,
    Sample,
    format_choices,
    load_samples,
    render_prompt,
    to_dataset,
)


def _wav(path, seconds: float = 0.2) -> str:
    write_wav(path, np.full(int(seconds * SAMPLE_RATE), 0.1, dtype=np.float32))
    return str(path)


def _row(i: int = 1, **overrides) -> dict:
    row = {
        "id": f"r{i}",
        "audio": "a.wav",
        "question": "which instrument?",
        "choices": ["violin", "cello"],
        "answer": "cello",
    }
    row.update(overrides)
    return row


def _jsonl(path, rows) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def ds(tmp_path):
    """A dataset folder holding one valid clip, a.wav."""
    _wav(tmp_path / "a.wav")
    return tmp_path


def _problems(meta, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_samples(meta, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- happy paths


def test_loads_valid_jsonl_with_extras_and_optionals(ds):
    meta = _jsonl(
        ds / "m.jsonl",
        [_row(1, task="instrument", difficulty="easy", source=None, rationale="low and warm"), "", "   "],
    )
    result = load_samples(meta)

    assert isinstance(result, LoadResult)
    assert result.skipped == [] and result.clips_too_long == 0
    (s,) = result.samples
    assert s == Sample(
        id="r1",
        audio=(os.path.abspath(ds / "a.wav"),),
        question="which instrument?",
        choices=("violin", "cello"),
        answer="cello",
        task="instrument",
        difficulty="easy",
    )
    assert s.extra == {"rationale": "low and warm"}
    assert os.path.isabs(s.audio[0])


def test_answer_whitespace_is_stripped(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(answer="  cello \n")])
    assert load_samples(meta).samples[0].answer == "cello"


def test_json_list_input(ds):
    meta = ds / "m.json"
    meta.write_text(json.dumps([_row(1), _row(2, answer="violin")]), encoding="utf-8")
    result = load_samples(meta)
    assert [s.id for s in result.samples] == ["r1", "r2"]
    assert [s.answer for s in result.samples] == ["cello", "violin"]


def test_json_list_problem_uses_index(ds):
    meta = ds / "m.json"
    meta.write_text(json.dumps([_row(1), _row(2, answer="harp")]), encoding="utf-8")
    assert f"{meta}:1 id=r2: answer:" in _problems(meta)


def test_multi_audio_rows(ds):
    _wav(ds / "b.wav")
    meta = _jsonl(ds / "m.jsonl", [_row(audio=["a.wav", "b.wav"])])
    (s,) = load_samples(meta).samples
    assert s.audio == (os.path.abspath(ds / "a.wav"), os.path.abspath(ds / "b.wav"))


def test_relative_paths_resolve_against_metadata_dir_by_default(tmp_path):
    (tmp_path / "meta").mkdir()
    _wav(tmp_path / "meta" / "clips" / "x.wav")
    meta = _jsonl(tmp_path / "meta" / "m.jsonl", [_row(audio="clips/x.wav")])
    (s,) = load_samples(meta).samples
    assert s.audio == (os.path.abspath(tmp_path / "meta" / "clips" / "x.wav"),)


def test_relative_paths_resolve_against_audio_root(tmp_path):
    _wav(tmp_path / "store" / "x.wav")
    meta = _jsonl(tmp_path / "m.jsonl", [_row(audio="x.wav")])
    (s,) = load_samples(meta, audio_root=tmp_path / "store").samples
    assert s.audio == (os.path.abspath(tmp_path / "store" / "x.wav"),)


def test_absolute_audio_paths_are_kept(tmp_path):
    clip = _wav(tmp_path / "elsewhere.wav")
    meta = _jsonl(tmp_path / "m.jsonl", [_row(audio=clip)])
    assert load_samples(meta, audio_root=tmp_path / "unused").samples[0].audio == (clip,)


def test_check_audio_false_skips_file_checks(tmp_path):
    meta = _jsonl(tmp_path / "m.jsonl", [_row(audio="missing.wav")])
    (s,) = load_samples(meta, check_audio=False).samples
    assert s.audio == (os.path.abspath(tmp_path / "missing.wav"),)


def test_clips_too_long_are_counted_not_rejected(ds):
    _wav(ds / "long.wav", seconds=1.0)
    meta = _jsonl(ds / "m.jsonl", [_row(1, audio=["a.wav", "long.wav"]), _row(2, audio="long.wav")])
    result = load_samples(meta, max_seconds=0.5)
    assert len(result.samples) == 2
    assert result.clips_too_long == 2
    assert load_samples(meta).clips_too_long == 0


# --------------------------------------------------------------------------- row problems


def test_answer_not_in_choices(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1), _row(7, answer="harp")])
    message = _problems(meta)
    assert message.startswith(f"1 problem row(s) in {meta}")
    assert f"{meta}:2 id=r7: answer:" in message
    assert "harp" in message


def test_missing_audio_file(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(3, audio="gone.wav")])
    message = _problems(meta)
    assert "id=r3" in message
    assert os.path.abspath(ds / "gone.wav") in message
    assert "not found" in message


def test_corrupt_audio(ds):
    (ds / "bad.wav").write_bytes(b"RIFF....WAVEgarbage" * 10)
    meta = _jsonl(ds / "m.jsonl", [_row(4, audio="bad.wav")])
    message = _problems(meta)
    assert f"{meta}:1 id=r4: audio:" in message
    assert os.path.abspath(ds / "bad.wav") in message


def test_one_bad_clip_in_multi_audio_row(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(5, audio=["a.wav", "gone.wav"])])
    message = _problems(meta)
    assert "id=r5" in message and os.path.abspath(ds / "gone.wav") in message
    assert os.path.abspath(ds / "a.wav") not in message


def test_duplicate_ids(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1), _row(2), _row(1)])
    message = _problems(meta)
    assert f"{meta}:3 id=r1: id: duplicate id, first used at {meta}:1" in message
    assert message.startswith("1 problem row(s)")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"choices": []}, "choices: needs at least 2 choices, got 0"),
        ({"choices": ["cello"]}, "choices: needs at least 2 choices, got 1"),
        ({"choices": ["cello", " cello "]}, "choices: duplicate choice"),
        ({"choices": ["cello", ""]}, "choices: every choice must be a non-empty string"),
        ({"choices": "cello,violin"}, "choices: expected a list of strings, got str"),
        ({"question": ""}, "question: must not be empty"),
        ({"question": 3}, "question: expected a string, got int"),
        ({"answer": 1}, "answer: expected a string, got int"),
        ({"id": ""}, "id: must not be empty"),
        ({"id": 12}, "id: expected a string, got int"),
        ({"audio": []}, "audio: expected a path string or a non-empty list"),
        ({"audio": 5}, "audio: expected a path string or a non-empty list"),
        ({"audio": ["a.wav", None]}, "audio: every audio path must be a non-empty string"),
        ({"task": 3}, "task: expected a string or null, got int"),
        ({"difficulty": ["easy"]}, "difficulty: expected a string or null, got list"),
    ],
)
def test_field_problems(ds, overrides, expected):
    meta = _jsonl(ds / "m.jsonl", [_row(9, **overrides)])
    message = _problems(meta)
    assert expected in message
    assert f"{meta}:1 id=" in message


@pytest.mark.parametrize("field", ["id", "audio", "question", "choices", "answer"])
def test_missing_field(ds, field):
    row = _row(9)
    del row[field]
    meta = _jsonl(ds / "m.jsonl", [row])
    message = _problems(meta)
    assert f"{field}: missing" in message
    assert ("id=?" if field == "id" else "id=r9") in message


def test_row_not_an_object(ds):
    meta = _jsonl(ds / "m.jsonl", ["[1, 2]"])
    assert f"{meta}:1 id=?: row: expected a JSON object, got list" in _problems(meta)


def test_invalid_json_line(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1), '{"id": "r2", "audio": ', _row(3)])
    message = _problems(meta)
    assert f"{meta}:2 id=?: row: invalid JSON" in message


def test_invalid_json_list_file(tmp_path):
    meta = tmp_path / "m.json"
    meta.write_text("[\n{\"id\": 1,,}\n]", encoding="utf-8")
    message = _problems(meta)
    assert str(meta) in message and "invalid JSON" in message and f"{meta}:2" in message


def test_json_file_not_a_list(tmp_path):
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(_row()), encoding="utf-8")
    assert "expected a JSON list" in _problems(meta)


def test_non_utf8_file(ds):
    meta = ds / "m.jsonl"
    meta.write_bytes(json.dumps(_row(1)).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    message = _problems(meta)
    assert f"{meta}:2" in message and "UTF-8" in message


def test_missing_metadata_file(tmp_path):
    meta = tmp_path / "none.jsonl"
    message = _problems(meta)
    assert str(meta) in message and "not found" in message


def test_directory_as_metadata_path(tmp_path):
    message = _problems(tmp_path)
    assert str(tmp_path) in message and "directory" in message


def test_unsupported_extension(tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text("id,audio\n", encoding="utf-8")
    assert "unsupported metadata format" in _problems(meta)


def test_empty_metadata_file(tmp_path):
    meta = _jsonl(tmp_path / "m.jsonl", [""])
    assert "no rows" in _problems(meta)


def test_raise_mode_reports_all_problems_at_once(ds):
    meta = _jsonl(
        ds / "m.jsonl",
        [
            _row(1),
            _row(2, answer="harp"),
            _row(3, audio="gone.wav", choices=[]),  # two problems in one row
            "not json",
            _row(1),
        ],
    )
    message = _problems(meta)
    lines = message.splitlines()
    assert lines[0] == f"4 problem row(s) in {meta}:"
    assert len(lines) == 1 + 5
    assert any(":2 id=r2: answer:" in ln for ln in lines)
    assert any(":3 id=r3: audio:" in ln and "gone.wav" in ln for ln in lines)
    assert any(":3 id=r3: choices:" in ln for ln in lines)
    assert any(":4 id=?: row: invalid JSON" in ln for ln in lines)
    assert any(":5 id=r1: id: duplicate" in ln for ln in lines)


def test_skip_mode_keeps_good_rows_and_logs_count(ds, caplog):
    meta = _jsonl(ds / "m.jsonl", [_row(1), _row(2, answer="harp"), "{oops", _row(4, audio="gone.wav"), _row(5)])
    with caplog.at_level(logging.WARNING, logger="audiothink.data"):
        result = load_samples(meta, on_error="skip")

    assert [s.id for s in result.samples] == ["r1", "r5"]
    assert len(result.skipped) == 3
    assert "id=r2" in result.skipped[0] and "harp" in result.skipped[0]
    assert "invalid JSON" in result.skipped[1]
    assert "gone.wav" in result.skipped[2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 of 5" in warnings[0].getMessage()


def test_skip_mode_without_problems_logs_nothing(ds, caplog):
    meta = _jsonl(ds / "m.jsonl", [_row(1)])
    with caplog.at_level(logging.WARNING, logger="audiothink.data"):
        assert load_samples(meta, on_error="skip").skipped == []
    assert not caplog.records


def test_unknown_on_error_value(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1)])
    with pytest.raises(ValueError, match="on_error") as info:
        load_samples(meta, on_error="ignore")
    assert not isinstance(info.value, DataError)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- prompts & dataset


def _sample(**kw) -> Sample:
    base = dict(id="s1", audio=("/x/a.wav",), question="which?", choices=("violin", "cello"), answer="cello")
    base.update(kw)
    return Sample(**base)


def test_format_choices():
    assert format_choices(["violin", "cello", "harp"]) == "(A) violin\n(B) cello\n(C) harp"


def test_render_prompt():
    template = "Q: {question}\nOptions:\n{choices}\nAnswer:"
    assert render_prompt(_sample(), template) == "Q: which?\nOptions:\n(A) violin\n(B) cello\nAnswer:"


def test_sample_extra_does_not_affect_equality_or_hash():
    a, b = _sample(extra={"rationale": "x"}), _sample(extra={"rationale": "y"})
    assert a == b and hash(a) == hash(b)


def test_to_dataset_columns():
    samples = [
        _sample(task="pitch", difficulty="hard", extra={"rationale": "the first tone is higher"}),
        _sample(id="s2", audio=("/x/a.wav", "/x/b.wav"), choices=("one", "two", "three"), answer="two"),
    ]
    dataset = to_dataset(samples, "{question}\n{choices}")

    assert set(dataset.column_names) == {
        "prompt", "audio", "id", "question", "choices", "answer", "task", "difficulty", "rationale",
    }
    first, second = dataset[0], dataset[1]
    assert first["prompt"] == "which?\n(A) violin\n(B) cello"
    assert isinstance(first["prompt"], str)
    assert first["audio"] == ["/x/a.wav"] and second["audio"] == ["/x/a.wav", "/x/b.wav"]
    assert second["choices"] == ["one", "two", "three"]
    assert (first["task"], first["difficulty"], first["rationale"]) == ("pitch", "hard", "the first tone is higher")
    assert (second["task"], second["difficulty"], second["rationale"]) == ("", "", "")
    assert second["answer"] == "two" and second["id"] == "s2"


def test_to_dataset_empty_has_columns():
    dataset = to_dataset([], "{question}{choices}")
    assert len(dataset) == 0
    assert "prompt" in dataset.column_names and "rationale" in dataset.column_names


def test_loaded_samples_round_trip_into_dataset(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1, rationale="warm"), _row(2, answer="violin")])
    dataset = to_dataset(load_samples(meta).samples, "{question} {choices}")
    assert dataset["id"] == ["r1", "r2"]
    assert dataset["rationale"] == ["warm", ""]
    assert dataset["audio"][0] == [os.path.abspath(ds / "a.wav")]


# --------------------------------------------------------------------------- reading formats, load_rows


def test_json_lines_under_json_and_data_names(ds):
    lines = json.dumps(_row(1)) + "\n" + json.dumps(_row(2)) + "\n"
    for name in ("m.json", "m.data", "m.txt"):
        (ds / name).write_text(lines, encoding="utf-8")
        assert [s.id for s in load_samples(ds / name).samples] == ["r1", "r2"], name
    (ds / "list.data").write_text(json.dumps([_row(3)]), encoding="utf-8")
    assert [s.id for s in load_samples(ds / "list.data").samples] == ["r3"]


def test_byte_order_mark_is_not_content(ds):
    (ds / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(_row(1)).encode() + b"\n")
    assert load_samples(ds / "m.jsonl").samples[0].id == "r1"


def test_lone_surrogate_escape_is_bad_text(ds):
    meta = _jsonl(ds / "m.jsonl", [_row(1), json.dumps(_row(2, question="x")).replace('"x"', '"\\ud83d!"')])
    assert "id=r2: question: text contains a lone surrogate \\ud83d" in _problems(meta)
    result = load_samples(meta, on_error="skip")
    assert [s.id for s in result.samples] == ["r1"] and result.problems_by_field == {"question": 1}


def test_load_rows_names_source_fields_and_prefers_reader_problems(ds):
    from audiothink.data import RawRow, load_rows

    rows = [
        RawRow("src:0", {"id": "a", "audio": "a.wav", "question": "q", "choices": ["x", "y"], "answer": "z"}),
        RawRow("src:1", {"id": "b", "audio": "a.wav", "question": "q", "choices": ["x", "y"]},
               [("label", "index 7 is out of range for 2 choice(s)")]),
        RawRow("src:2", {"id": "c", "audio": "a.wav", "question": "q", "choices": ["x", "y"], "answer": "x"}),
    ]
    names = {"answer": "label", "choices": "options"}
    message = str(pytest.raises(DataError, load_rows, rows, source="my set", audio_root=ds, field_names=names).value)
    assert message.splitlines() == [
        "2 problem row(s) in my set:",
        "src:0 id=a: label: 'z' is not one of the choices ['x', 'y']",
        "src:1 id=b: label: index 7 is out of range for 2 choice(s)",  # not also "label: missing"
    ]
    result = load_rows(rows, source="my set", audio_root=ds, on_error="skip", field_names=names)
    assert [s.id for s in result.samples] == ["c"] and result.rows == 3 and result.problems_by_field == {"label": 2}


def test_unreadable_metadata_file(ds, monkeypatch):
    meta = _jsonl(ds / "m.jsonl", [_row(1)])
    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(ds), "read_bytes", denied)
    assert "cannot read metadata file (Permission denied)" in _problems(meta)
