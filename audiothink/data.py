"""The unified sample schema shared by every dataset, and its loader.

Every dataset (toy or real) is converted to one metadata file of rows like::

    {"id": "q1", "audio": "clips/q1.wav", "question": "which instrument?",
     "choices": ["violin", "cello"], "answer": "cello", "task": "instrument"}

:func:`load_samples` validates the whole file before training starts, because a bad row
found at step 40k wastes a run. Problems are reported all at once with the metadata file,
line and row id so they can be fixed in one pass.

Other formats (AVQA, Hugging Face datasets: :mod:`audiothink.sources`) map their rows onto this
schema and go through the same validator, :func:`load_rows`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from audiothink.audio import check_audio as _check_audio_file, short_clip_problem
from audiothink.plumbing.errors import AudioError, DataError

__all__ = [
    "Sample",
    "DataError",
    "LoadResult",
    "RawRow",
    "RowChecks",
    "load_samples",
    "load_rows",
    "read_metadata_rows",
    "format_choices",
    "render_prompt",
    "to_dataset",
]

logger = logging.getLogger(__name__)

_OPTIONAL_STR_FIELDS = ("task", "category", "difficulty", "source")
# Choices are lettered (A) ... (Z) in the prompt.
MAX_CHOICES = len(string.ascii_uppercase)
# Chat and audio control tokens of the Qwen family (<|im_start|>, <|im_end|>, <|AUDIO|>, <|audio_bos|>, ...):
# never text in a row, whatever the tokenizer (RowChecks.control_tokens adds a tokenizer's own).
_CONTROL_TOKEN = re.compile(r"<\|[^|<>\s]{1,64}\|>")
_KNOWN_FIELDS = frozenset(("id", "audio", "question", "choices", "answer", *_OPTIONAL_STR_FIELDS))


@dataclass(frozen=True)
class Sample:
    """One audio question with a closed set of answer choices."""

    id: str
    audio: tuple[str, ...]  # absolute paths, one or more clips
    question: str
    choices: tuple[str, ...]
    answer: str
    task: str | None = None
    category: str | None = None
    difficulty: str | None = None
    source: str | None = None
    # Row fields the schema does not know (e.g. the toy set's "rationale"); kept rather than
    # dropped so dataset-specific extras survive without widening the schema.
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class LoadResult:
    samples: list[Sample]
    skipped: list[str]  # one reason per skipped row
    clips_too_long: int = 0  # clips longer than the model's window (max_seconds without checks): data.long_audio
    rows: int = 0  # rows read (good and bad)
    # rows with a problem, by field name (as the source names it); a row with two bad fields counts twice
    problems_by_field: dict[str, int] = field(default_factory=dict)
    # what a loader or transform did on the way, for the log: {"questions_rewritten": 12, ...}
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RowChecks:
    """Checks that depend on the model, added to the schema's own once its processor is known.

    ``min_audio_samples``: clips shorter than this (at 16 kHz) expand to fewer audio tokens than the model
    (``model_type``) can take (:func:`audiothink.audio.min_clip_samples`): the row would train without audio, or
    crash the batch. ``control_tokens``: strings the
    tokenizer reads as chat/audio control tokens (``<|im_end|>``, ``<|AUDIO|>``…); in a question or a choice
    they would end the user turn or add an audio placeholder with no audio behind it. ``prompt_tokens``
    (``(Sample, clip durations in s) -> int``, the prompt's length in tokens, audio included) and
    ``max_prompt_tokens``: a longer prompt is a row problem, found before the model loads instead of as an
    out-of-memory at the first step; ``prompt_limit`` says in words where the limit comes from (the setting, or
    the model's context less the completion length). ``window``: the model's audio window and what a longer
    clip becomes (:class:`audiothink.audio.AudioWindow`, ``data.long_audio``): under ``error`` such a clip is a
    row problem naming the file, otherwise it is counted in ``clips_too_long``.
    """

    min_audio_samples: int = 0
    control_tokens: tuple[str, ...] = ()
    prompt_tokens: Any = None
    max_prompt_tokens: int | None = None
    model_type: str | None = None
    prompt_limit: str | None = None
    window: Any = None


@dataclass
class RawRow:
    """One metadata row as read, before validation.

    ``where`` ("<file>:<line or index>") prefixes every message about the row; ``row`` is the parsed
    object (None if it could not be parsed); ``problems`` are ``(field, reason)`` pairs found while
    reading or mapping it, with field names as the source spells them.
    """

    where: str
    row: Any
    problems: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- reading rows

# Suffixes read as metadata. .data is R1-AQA's name for its JSON-lines AVQA file.
_LINE_SUFFIXES = (".jsonl", ".ndjson")
_SNIFF_SUFFIXES = (".data", ".txt", "")
_DOC_SUFFIXES = (".json",)
# Lone surrogates: bytes that were not UTF-8 (decoded with surrogateescape), or JSON "\udXXX" escapes
# without a partner. Neither can be encoded as UTF-8, so a tokenizer would fail on them later.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _read_text(path: Path) -> str:
    """The file's text. Bytes that are not UTF-8 become lone surrogates, reported per row later."""
    if not path.exists():
        raise DataError(f"{path}: metadata file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl or .json metadata file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read metadata file ({exc.strerror or exc})") from exc
    text = raw.decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text  # a UTF-8 byte-order mark is not content


def _bad_text_reason(text: str) -> str | None:
    m = _SURROGATE.search(text)
    if m is None:
        return None
    code = ord(m.group(0))
    if 0xDC80 <= code <= 0xDCFF:
        return f"text is not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character {m.start()})"
    return f"text contains a lone surrogate \\u{code:04x}, which is not valid UTF-8"


def _text_problems(row: Any) -> list[tuple[str, str]]:
    """``(field, reason)`` for every top-level field whose text (at any depth) is not valid UTF-8."""
    if not isinstance(row, dict):
        return []

    def first_bad(value: Any) -> str | None:
        if isinstance(value, str):
            return _bad_text_reason(value)
        if isinstance(value, list):
            return next((r for r in map(first_bad, value) if r), None)
        if isinstance(value, dict):
            return next((r for k, v in value.items() for r in (first_bad(k), first_bad(v)) if r), None)
        return None

    problems = []
    for key, value in row.items():
        reason = _bad_text_reason(key) or first_bad(value)
        if reason:
            problems.append(("row" if _bad_text_reason(key) else key, reason))
    return problems


def _parsed(where: str, row: Any) -> RawRow:
    return RawRow(where, row, _text_problems(row))


def _lines(path: Path, text: str) -> list[RawRow]:
    rows: list[RawRow] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rows.append(_parsed(where, json.loads(line)))
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON ({exc.msg} at column {exc.colno})"
            if _SURROGATE.search(line):
                reason += "; " + _bad_text_reason(line)  # type: ignore[operator]
            rows.append(RawRow(where, None, [("row", reason)]))
    return rows


def _document(path: Path, text: str) -> list[RawRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _lines(path, text)  # JSON lines under a .json name (R1-AQA's files are named so)
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return [_parsed(f"{path}:{i}", row) for i, row in enumerate(data)]


def read_metadata_rows(path: str | os.PathLike) -> list[RawRow]:
    """Parse a metadata file into :class:`RawRow` objects, without validating them.

    ``.jsonl``/``.ndjson``: one object per line, location = 1-based line. ``.json``: a JSON list,
    location = 0-based index (JSON lines under a ``.json`` name are recognised). ``.data``/``.txt``/
    no suffix: a list if the text starts with ``[``, else JSON lines. A broken line or text that is
    not UTF-8 is a row problem (reported with every other one, or skipped); a file that cannot be
    read or parsed at all is a :class:`DataError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _LINE_SUFFIXES + _SNIFF_SUFFIXES + _DOC_SUFFIXES:
        raise DataError(f"{path}: unsupported metadata format {suffix!r}, expected .jsonl or .json")
    text = _read_text(path)
    if suffix in _LINE_SUFFIXES:
        return _lines(path, text)
    if suffix in _DOC_SUFFIXES or text.lstrip().startswith("["):
        return _document(path, text)
    return _lines(path, text)


# --------------------------------------------------------------------------- validation


class _RowProblems:
    """Collects ``field: reason`` problems for one row."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_name: str, reason: str) -> None:
        self.items.append((field_name, reason))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required_str(row: dict, name: str, problems: _RowProblems) -> str | None:
    if name not in row:
        problems.add(name, "missing")
        return None
    value = row[name]
    if not isinstance(value, str):
        problems.add(name, f"expected a string, got {_type_name(value)}")
        return None
    if not value.strip():
        problems.add(name, "must not be empty")
        return None
    return value.strip()


def _optional_str(row: dict, name: str, problems: _RowProblems) -> str | None:
    value = row.get(name)
    if value is None or isinstance(value, str):
        return value
    problems.add(name, f"expected a string or null, got {_type_name(value)}")
    return None


def _choices(row: dict, problems: _RowProblems) -> tuple[str, ...] | None:
    if "choices" not in row:
        problems.add("choices", "missing")
        return None
    value = row["choices"]
    if not isinstance(value, list):
        problems.add("choices", f"expected a list of strings, got {_type_name(value)}")
        return None
    if len(value) < 2:
        problems.add("choices", f"needs at least 2 choices, got {len(value)}")
        return None
    if len(value) > MAX_CHOICES:
        problems.add("choices", f"at most {MAX_CHOICES} choices are supported (the prompt letters them A-Z), "
                                f"got {len(value)}")
        return None
    bad = [c for c in value if not isinstance(c, str) or not c.strip()]
    if bad:
        problems.add("choices", f"every choice must be a non-empty string, got {bad[0]!r}")
        return None
    stripped = tuple(c.strip() for c in value)
    dupes = sorted({c for c in stripped if stripped.count(c) > 1})
    if dupes:
        problems.add("choices", f"duplicate choice(s) {dupes}")
        return None
    broken = [c for c in stripped if "\n" in c or "\r" in c]
    if broken:
        problems.add("choices", f"choice {broken[0]!r} has a line break: the prompt shows one choice a line, so it "
                                "would draw a fake option line")
        return None
    # The accuracy reward scores with the benchmarks' rule, which compares word sets (audiothink/benchmarks/
    # scoring.py): a choice without words, or two choices with the same words, cannot be told apart by it.
    from audiothink.scoring import tokenize  # here: audiothink.benchmarks imports this module

    words = [tokenize(c) for c in stripped]
    empty = [c for c, w in zip(stripped, words) if not w]
    if empty:
        problems.add("choices", f"choice {empty[0]!r} has no words: the scoring rule (words of the answer) cannot "
                                "recognise it")
        return None
    same = [(a, b) for i, a in enumerate(stripped) for j, b in enumerate(stripped) if i < j and words[i] == words[j]]
    if same:
        problems.add("choices", f"choices {same[0][0]!r} and {same[0][1]!r} have the same words: the scoring rule "
                                "(word sets, case-insensitive) cannot tell them apart")
        return None
    return stripped


def _answer(row: dict, choices: tuple[str, ...] | None, problems: _RowProblems) -> str | None:
    if "answer" not in row:
        problems.add("answer", "missing")
        return None
    value = row["answer"]
    if not isinstance(value, str):
        problems.add("answer", f"expected a string, got {_type_name(value)}")
        return None
    answer = value.strip()
    if choices is not None and answer not in choices:
        problems.add("answer", f"{answer!r} is not one of the choices {list(choices)}")
        return None
    return answer


def _audio_paths(row: dict, audio_root: Path, problems: _RowProblems) -> tuple[str, ...] | None:
    if "audio" not in row:
        problems.add("audio", "missing")
        return None
    value = row["audio"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        problems.add("audio", f"expected a path string or a non-empty list of paths, got {value!r}")
        return None
    if any(not isinstance(p, str) or not p.strip() for p in items):
        problems.add("audio", f"every audio path must be a non-empty string, got {value!r}")
        return None
    # abspath, not resolve(): keep the user's symlinked layout visible in messages.
    return tuple(os.path.abspath(audio_root / p.strip()) for p in items)


class _AudioChecker:
    """Checks clips with :func:`audiothink.audio.check_audio`, once per path (rows often share clips)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self._cache: dict[str, tuple[float | None, str | None]] = {}

    def check(self, path: str) -> tuple[float | None, str | None]:
        """Return ``(duration, error_message)``; the message names ``path``.

        The row id is not passed to the audio check because results are shared between
        rows; the caller's ``id=`` prefix already names the row.
        """
        if path not in self._cache:
            try:
                duration, _, _ = _check_audio_file(path, max_seconds=self.max_seconds)
                self._cache[path] = (duration, None)
            except AudioError as exc:
                self._cache[path] = (None, str(exc))
        return self._cache[path]

    def too_long(self, duration: float | None) -> bool:
        return self.max_seconds is not None and duration is not None and duration > self.max_seconds


def _control_token_problems(fields: dict[str, Any], tokens: tuple[str, ...], problems: _RowProblems) -> None:
    for name, value in fields.items():
        texts = [value] if isinstance(value, str) else list(value or ())
        for text in texts:
            hit = next((t for t in tokens if t in text), None) or _CONTROL_TOKEN.search(text)
            if hit:
                token = hit if isinstance(hit, str) else hit.group(0)
                problems.add(name, f"contains the control token {token!r}, which the tokenizer would read as a "
                                   "chat/audio marker, not as text")
                break


def _validate_row(
    row: Any,
    audio_root: Path,
    checker: _AudioChecker | None,
    checks: RowChecks | None = None,
) -> tuple[Sample | None, _RowProblems, int]:
    """Validate one parsed row; return ``(sample or None, problems, clips_too_long)``."""
    problems = _RowProblems()
    if not isinstance(row, dict):
        problems.add("row", f"expected a JSON object, got {_type_name(row)}")
        return None, problems, 0

    row_id = _required_str(row, "id", problems)
    audio = _audio_paths(row, audio_root, problems)
    question = _required_str(row, "question", problems)
    choices = _choices(row, problems)
    answer = _answer(row, choices, problems)
    optional = {name: _optional_str(row, name, problems) for name in _OPTIONAL_STR_FIELDS}

    checks = checks or RowChecks()
    _control_token_problems({"question": question, "choices": choices, "answer": answer}, checks.control_tokens,
                            problems)

    too_long = 0
    durations: list[float] = []
    if audio is not None and checker is not None:
        for path in audio:
            duration, error = checker.check(path)
            if error is not None:
                problems.add("audio", error)
                continue
            durations.append(duration or 0.0)
            if checks.window is not None:  # the model's window (data.long_audio=error: a problem naming the file)
                long_problem = checks.window.problem(path, duration or 0.0)
                if long_problem is not None:
                    problems.add("audio", long_problem)
                too_long += checks.window.too_long(duration or 0.0)
            elif checker.too_long(duration):
                too_long += 1
            short = short_clip_problem(path, duration or 0.0, checks.min_audio_samples, checks.model_type)
            if short is not None:
                problems.add("audio", short)

    if problems.items:
        return None, problems, 0
    extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
    sample = Sample(
        id=row_id,  # type: ignore[arg-type]  # validated above
        audio=audio,  # type: ignore[arg-type]
        question=question,  # type: ignore[arg-type]
        choices=choices,  # type: ignore[arg-type]
        answer=answer,  # type: ignore[arg-type]
        extra=extra,
        **optional,
    )
    if checks.prompt_tokens is not None and checks.max_prompt_tokens is not None and checker is not None:
        n = checks.prompt_tokens(sample, durations)
        if n > checks.max_prompt_tokens:
            limit = checks.prompt_limit or f"data.max_prompt_tokens={checks.max_prompt_tokens}"
            problems.add("question", f"the prompt is {n} tokens (text and audio), over {limit}")
            return None, problems, 0
    return sample, problems, too_long


def _row_id_for_message(row: Any) -> str:
    if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"].strip():
        return row["id"].strip()
    return "?"


def load_rows(
    rows: Iterable[RawRow],
    *,
    source: str,
    audio_root: str | os.PathLike,
    on_error: str = "raise",
    check_audio: bool = True,
    max_seconds: float | None = None,
    field_names: Mapping[str, str] | None = None,
    checks: RowChecks | None = None,
) -> LoadResult:
    """Validate rows already in the unified schema; the validator behind every loader.

    ``source`` names the data in summary messages; ``field_names`` maps schema names to the names
    the source uses (``{"question": "question_text"}``) so messages name the field the user can
    find in their file. A problem already attached to a :class:`RawRow` (found while reading or
    mapping) replaces the validator's own message about the same field.

    ``on_error="raise"``: every row is checked, then one :class:`DataError` lists every problem as
    ``<where> id=<id>: <field>: <reason>``. ``on_error="skip"``: bad rows are dropped, one reason
    per row is returned in ``skipped`` and a warning gives the count. Either way, no usable row at
    all is a :class:`DataError`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    names = dict(field_names or {})
    root = Path(os.path.abspath(audio_root))
    # under data.long_audio=chunk the whole of every clip is heard: a float file is scanned to its end for NaN/inf
    chunked = checks is not None and checks.window is not None and checks.window.long_audio == "chunk"
    checker = _AudioChecker(None if chunked else max_seconds) if check_audio else None

    samples: list[Sample] = []
    bad_rows: list[list[str]] = []
    by_field: Counter[str] = Counter()
    clips_too_long = n_rows = 0
    first_seen: dict[str, str] = {}
    for raw in rows:
        n_rows += 1
        rid = _row_id_for_message(raw.row)
        prefix = f"{raw.where} id={rid}"
        problems: list[tuple[str, str]] = list(raw.problems)
        sample, too_long = None, 0
        if raw.row is not None or not problems:
            # a row already known bad (e.g. text that is not UTF-8) is not tokenized for the model's checks
            sample, found, too_long = _validate_row(raw.row, root, checker, None if problems else checks)
            named = {f for f, _ in problems}
            problems += [(names.get(f, f), r) for f, r in found.items if names.get(f, f) not in named]
        if rid != "?":
            # Duplicates are flagged on the later row so the first occurrence stays usable.
            if rid in first_seen:
                problems.append((names.get("id", "id"), f"duplicate id, first used at {first_seen[rid]}"))
            else:
                first_seen[rid] = raw.where
        if problems:
            bad_rows.append([f"{prefix}: {name}: {reason}" for name, reason in problems])
            by_field.update({name for name, _ in problems})
            continue
        assert sample is not None
        samples.append(sample)
        clips_too_long += too_long

    if n_rows == 0:
        raise DataError(f"{source}: metadata file contains no rows")
    if bad_rows and on_error == "raise":
        lines = [msg for row_msgs in bad_rows for msg in row_msgs]
        raise DataError(f"{len(bad_rows)} problem row(s) in {source}:\n" + "\n".join(lines))
    skipped = ["; ".join(row_msgs) for row_msgs in bad_rows]
    if not samples:
        raise DataError(
            f"{source}: no usable rows, all {n_rows} have problems (data.on_error=skip); first: {skipped[0]}"
        )
    if skipped:
        fields_text = ", ".join(f"{n} x {name}" for name, n in by_field.most_common())
        logger.warning(
            "skipped %d of %d row(s) in %s (%s); first problem: %s",
            len(skipped), n_rows, source, fields_text, skipped[0],
        )
    return LoadResult(
        samples=samples, skipped=skipped, clips_too_long=clips_too_long, rows=n_rows,
        problems_by_field=dict(by_field),
    )


def load_samples(
    path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    check_audio: bool = True,
    max_seconds: float | None = None,
    checks: RowChecks | None = None,
) -> LoadResult:
    """Load and validate a ``.jsonl`` or ``.json`` metadata file in the unified schema.

    Relative audio paths are joined onto ``audio_root`` (default: the metadata file's
    directory) so a dataset folder can be moved as a whole. With ``on_error="raise"`` every
    row is validated first and one :class:`DataError` lists all problems; with
    ``on_error="skip"`` bad rows are dropped and their reasons returned in ``skipped``.
    Problem lines look like ``"<path>:<line or index> id=<id>: <field>: <reason>"``.
    Audio is checked with :func:`audiothink.audio.check_audio` (header; float files also for
    NaN/inf); clips longer than ``max_seconds`` are counted in ``clips_too_long``, not rejected.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    meta = Path(path)
    root = Path(audio_root) if audio_root is not None else meta.parent
    return load_rows(
        read_metadata_rows(meta), source=str(meta), audio_root=root, on_error=on_error,
        check_audio=check_audio, max_seconds=max_seconds, checks=checks,
    )


# --------------------------------------------------------------------------- prompts


def format_choices(choices: Sequence[str]) -> str:
    """Render choices as ``(A) violin`` lines; letters give the model a stable answer handle."""
    if len(choices) > len(string.ascii_uppercase):
        raise ValueError(f"at most {len(string.ascii_uppercase)} choices are supported, got {len(choices)}")
    return "\n".join(f"({letter}) {choice}" for letter, choice in zip(string.ascii_uppercase, choices))


def render_prompt(sample: Sample, template: str) -> str:
    """Fill ``template``'s ``{question}`` and ``{choices}`` placeholders for ``sample``."""
    return template.format(question=sample.question, choices=format_choices(sample.choices))


def to_dataset(samples: Iterable[Sample], template: str):
    """Build the ``datasets.Dataset`` the trainer consumes (one row per sample).

    Optional fields become ``""`` instead of None because Arrow string columns with nulls
    turn into surprising ``None`` values inside reward functions.
    """
    import datasets  # imported lazily: it is slow to import and only the trainer needs it

    samples = list(samples)
    columns: dict[str, list] = {
        "prompt": [render_prompt(s, template) for s in samples],
        "audio": [list(s.audio) for s in samples],
        "id": [s.id for s in samples],
        "question": [s.question for s in samples],
        "choices": [list(s.choices) for s in samples],
        "answer": [s.answer for s in samples],
        "task": [s.task or "" for s in samples],
        "difficulty": [s.difficulty or "" for s in samples],
        "rationale": [str(s.extra.get("rationale") or "") for s in samples],
    }
    text = datasets.Value("string")
    # datasets < 4 has no List feature; Sequence of a scalar is the same Arrow list there.
    list_of = getattr(datasets, "List", datasets.Sequence)
    features = datasets.Features(
        {
            "prompt": text,
            "audio": list_of(text),
            "id": text,
            "question": text,
            "choices": list_of(text),
            "answer": text,
            "task": text,
            "difficulty": text,
            "rationale": text,
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)
