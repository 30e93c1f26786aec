"""Map a foreign row (AVQA, a Hugging Face dataset, ...) onto the unified schema.

A :class:`FieldMap` says which column holds each schema field; :func:`map_row` builds the unified
row and reports what cannot be mapped (an answer index out of range, an audio template naming a
missing field) as ``(field, reason)`` pairs under the source's own field names. Everything else is
left for :func:`audiothink.data.load_rows` to validate, so every format gets the same checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["FieldMap", "RowMapping", "map_row"]

_ANSWER_FORMATS = ("auto", "index", "text")
# AVQA/VGGSound clip names: "<youtube id>_<start second>", the start zero-padded in some copies
# ("-HG3Omg_89c_000030") and not in others ("-HG3Omg_89c_30.wav", R1-AQA's audio files).
_CLIP_NAME = re.compile(r"^(?P<ytid>.+)_(?P<start>\d+)$")
_SEP = re.compile(r"[\\/]")
_SCHEMA = ("id", "audio", "question", "choices", "answer", "task", "category", "difficulty", "source")


@dataclass(frozen=True)
class FieldMap:
    """Source column for each schema field; ``None`` for an optional field the source lacks."""

    id: str = "id"
    audio: str = "audio"
    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    task: str | None = "task"
    category: str | None = "category"
    difficulty: str | None = "difficulty"
    source: str | None = "source"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, default: "FieldMap | None" = None) -> "FieldMap":
        base = default or cls()
        if not cfg:
            return base
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"data.fields: unknown schema field(s) {unknown}; known: {sorted(known)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        values.update({k: (None if v in (None, "") else str(v)) for k, v in cfg.items()})
        for required in ("id", "audio", "question", "choices", "answer"):
            if values[required] is None:
                raise ValueError(f"data.fields.{required}: a required field needs a column name")
        return cls(**values)

    def display_names(self) -> dict[str, str]:
        """Schema name -> source name, for messages."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True)
class RowMapping:
    """How rows of one source become unified rows.

    - ``answer_format``: ``index`` (an int, or a string of digits, is a 0-based index into the
      choices), ``text`` (the answer is the choice text) or ``auto`` (ints are indices, strings text).
    - ``question_rewrite``: plain, case-sensitive substring replacements applied to the question in
      order (``{"video": "audio"}`` is the R1-AQA / Audio-Thinker rewrite of AVQA questions).
    - ``audio_template``: build the audio path from row fields instead of reading ``fields.audio``,
      e.g. ``"{video_name}.wav"``; ``{ytid}`` and ``{start}`` (unpadded) are parsed from a
      ``video_name`` like ``-HG3Omg_89c_000030``, so ``"{ytid}_{start}.wav"`` names R1-AQA's files.
    - ``audio_basename``: keep only the file name of each audio path (the directory part is joined
      from ``data.audio_root``), for metadata that carries its authors' absolute paths.
    - ``default_source``: the ``source`` value for rows that name none.
    """

    fields: FieldMap = field(default_factory=FieldMap)
    answer_format: str = "auto"
    question_rewrite: Mapping[str, str] = field(default_factory=dict)
    audio_template: str | None = None
    audio_basename: bool = False
    default_source: str | None = None

    def __post_init__(self) -> None:
        if self.answer_format not in _ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {_ANSWER_FORMATS}, got {self.answer_format!r}")
        for old in self.question_rewrite:
            if not old:
                raise ValueError("question_rewrite: an empty string cannot be replaced")


def _audio_value(raw: dict, m: RowMapping) -> tuple[Any, str | None]:
    """The row's audio path(s), or ``(None, reason)``; values of the wrong type pass through."""
    if m.audio_template is not None:
        values = dict(raw)
        name = raw.get("video_name")
        match = _CLIP_NAME.match(name) if isinstance(name, str) else None
        if match:
            values.setdefault("ytid", match["ytid"])
            values.setdefault("start", int(match["start"]))
        try:
            return m.audio_template.format(**values), None
        except KeyError as exc:
            return None, f"audio_template {m.audio_template!r} needs field {exc.args[0]!r}, missing in the row"
        except (IndexError, ValueError, AttributeError) as exc:
            return None, f"audio_template {m.audio_template!r} cannot be filled ({exc})"
    value = raw.get(m.fields.audio)
    if m.audio_basename:
        if isinstance(value, str):
            value = _SEP.split(value)[-1]
        elif isinstance(value, list):
            value = [_SEP.split(v)[-1] if isinstance(v, str) else v for v in value]
    return value, None


def _answer_value(raw: dict, m: RowMapping) -> tuple[Any, str | None]:
    value = raw.get(m.fields.answer)
    choices = raw.get(m.fields.choices)
    as_index = None
    if isinstance(value, bool):
        return value, None  # left for the validator: "expected a string, got bool"
    if isinstance(value, int) and m.answer_format in ("auto", "index"):
        as_index = value
    elif isinstance(value, str) and m.answer_format == "index":
        if not value.strip().isdigit():
            return None, f"expected a 0-based choice index (answer_format=index), got {value!r}"
        as_index = int(value)
    if as_index is None:
        return value, None
    if not isinstance(choices, list):
        return None, f"index {as_index} cannot be resolved: {m.fields.choices} is not a list"
    if not 0 <= as_index < len(choices):
        return None, f"index {as_index} is out of range for {len(choices)} choice(s)"
    return choices[as_index], None


def map_row(raw: Any, m: RowMapping) -> tuple[Any, list[tuple[str, str]], bool]:
    """``(unified row, problems, question_rewritten)``.

    Columns the mapping does not use are kept under their own names (they end up in
    :attr:`audiothink.data.Sample.extra`); null values are dropped, so a null required field is
    reported as missing. A non-dict row is returned unchanged for the validator.
    """
    if not isinstance(raw, dict):
        return raw, [], False
    f = m.fields
    # A null (how Arrow and parquet store an absent value) reads as a missing field.
    raw = {k: v for k, v in raw.items() if v is not None}
    problems: list[tuple[str, str]] = []
    used = {f.id, f.question, f.choices, f.answer, f.task, f.category, f.difficulty, f.source}
    used.add(f.audio if m.audio_template is None else "")
    # A column spelled like a schema field but not mapped to it is dropped, not read as that field.
    row: dict[str, Any] = {k: v for k, v in raw.items() if k not in used and k not in _SCHEMA}

    if f.id in raw:
        rid = raw[f.id]
        # Integer ids (AVQA's) become strings; anything else is left for the validator.
        row["id"] = str(rid) if isinstance(rid, int) and not isinstance(rid, bool) else rid

    audio, reason = _audio_value(raw, m)
    if reason is not None:
        problems.append((f.audio if m.audio_template is None else "audio", reason))
    elif audio is not None:
        row["audio"] = audio

    rewritten = False
    if f.question in raw:
        question = raw[f.question]
        if isinstance(question, str):
            for old, new in m.question_rewrite.items():
                question = question.replace(old, new)
            rewritten = question != raw[f.question]
        row["question"] = question

    if f.choices in raw:
        row["choices"] = raw[f.choices]
    if f.answer in raw:
        answer, reason = _answer_value(raw, m)
        if reason is not None:
            problems.append((f.answer, reason))
        else:
            row["answer"] = answer

    for name in ("task", "category", "difficulty", "source"):
        column = getattr(f, name)
        if column is not None and raw.get(column) is not None:
            value = raw[column]
            # a one-element list (a few MMAU categories) is the element; numbers become text
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            row[name] = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if row.get("source") is None and m.default_source is not None:
        row["source"] = m.default_source
    return row, problems, rewritten
