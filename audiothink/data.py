"""The unified sample schema shared by every dataset, and its loader.

Every dataset (toy or real) is converted to one metadata file of rows like::

    {"id": "q1", "audio": "clips/q1.wav", "question": "which instrument?",
     "choices": ["violin", "cello"], "answer": "cello", "task": "instrument"}

:func:`load_samples` validates the whole file before training starts, because a bad row
found at step 40k wastes a run. Problems are reported all at once with the metadata file,
line and row id so they can be fixed in one pass.
"""

from __future__ import annotations

import json
import logging
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audiothink.audio import AudioError, audio_info

__all__ = [
    "Sample",
    "DataError",
    "LoadResult",
    "load_samples",
    "format_choices",
    "render_prompt",
    "to_dataset",
]

logger = logging.getLogger(__name__)

_OPTIONAL_STR_FIELDS = ("task", "category", "difficulty", "source")
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


class DataError(ValueError):
    """A metadata file or row that does not match the schema."""


@dataclass
class LoadResult:
    samples: list[Sample]
    skipped: list[str]  # one reason per skipped row
    clips_too_long: int = 0  # clips longer than max_seconds; clipped at load time, not an error


# --------------------------------------------------------------------------- reading rows


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: metadata file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl or .json metadata file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: file is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from exc


def _read_rows(path: Path) -> list[tuple[int, Any, str | None]]:
    """Return ``(location, row, json_error)`` per row.

    Location is the 1-based line number for .jsonl and the 0-based list index for .json.
    A broken JSON line is returned as a row problem (not raised) so that raise mode can
    report it alongside every other problem and skip mode can drop just that line.
    """
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: list[tuple[int, Any, str | None]] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line), None))
            except json.JSONDecodeError as exc:
                rows.append((lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return [(i, row, None) for i, row in enumerate(data)]
    raise DataError(f"{path}: unsupported metadata format {suffix!r}, expected .jsonl or .json")


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
    bad = [c for c in value if not isinstance(c, str) or not c.strip()]
    if bad:
        problems.add("choices", f"every choice must be a non-empty string, got {bad[0]!r}")
        return None
    stripped = tuple(c.strip() for c in value)
    dupes = sorted({c for c in stripped if stripped.count(c) > 1})
    if dupes:
        problems.add("choices", f"duplicate choice(s) {dupes}")
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
    """Checks clips with :func:`audio_info`, once per path (rows often share clips)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self._cache: dict[str, tuple[float | None, str | None]] = {}

    def check(self, path: str) -> tuple[float | None, str | None]:
        """Return ``(duration, error_message)``; the message names ``path``.

        The row id is not passed to :func:`audio_info` because results are shared between
        rows; the caller's ``id=`` prefix already names the row.
        """
        if path not in self._cache:
            try:
                duration, _, _ = audio_info(path)
                self._cache[path] = (duration, None)
            except AudioError as exc:
                self._cache[path] = (None, str(exc))
        return self._cache[path]

    def too_long(self, duration: float | None) -> bool:
        return self.max_seconds is not None and duration is not None and duration > self.max_seconds


def _validate_row(
    row: Any,
    audio_root: Path,
    checker: _AudioChecker | None,
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

    too_long = 0
    if audio is not None and checker is not None:
        for path in audio:
            duration, error = checker.check(path)
            if error is not None:
                problems.add("audio", error)
            elif checker.too_long(duration):
                too_long += 1

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
    return sample, problems, too_long


def _row_id_for_message(row: Any) -> str:
    if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"].strip():
        return row["id"].strip()
    return "?"


def load_samples(
    path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    check_audio: bool = True,
    max_seconds: float | None = None,
) -> LoadResult:
    """Load and validate a ``.jsonl`` or ``.json`` metadata file.

    Relative audio paths are joined onto ``audio_root`` (default: the metadata file's
    directory) so a dataset folder can be moved as a whole. With ``on_error="raise"`` every
    row is validated first and one :class:`DataError` lists all problems; with
    ``on_error="skip"`` bad rows are dropped and their reasons returned in ``skipped``.
    Problem lines look like ``"<path>:<line or index> id=<id>: <field>: <reason>"``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    meta = Path(path)
    root = Path(audio_root) if audio_root is not None else meta.parent
    root = Path(os.path.abspath(root))
    checker = _AudioChecker(max_seconds) if check_audio else None

    rows = _read_rows(meta)
    if not rows:
        raise DataError(f"{meta}: metadata file contains no rows")

    samples: list[Sample] = []
    bad_rows: list[list[str]] = []
    clips_too_long = 0
    first_seen: dict[str, int] = {}
    for loc, row, json_error in rows:
        prefix = f"{meta}:{loc} id={_row_id_for_message(row)}"
        if json_error is not None:
            bad_rows.append([f"{prefix}: row: {json_error}"])
            continue
        sample, problems, too_long = _validate_row(row, root, checker)
        rid = _row_id_for_message(row)
        if rid != "?":
            # Duplicates are flagged on the later row so the first occurrence stays usable.
            if rid in first_seen:
                problems.add("id", f"duplicate id, first used at {meta}:{first_seen[rid]}")
                sample = None
            else:
                first_seen[rid] = loc
        if problems.items:
            bad_rows.append([f"{prefix}: {name}: {reason}" for name, reason in problems.items])
            continue
        assert sample is not None
        samples.append(sample)
        clips_too_long += too_long

    if bad_rows and on_error == "raise":
        lines = [msg for row_msgs in bad_rows for msg in row_msgs]
        raise DataError(f"{len(bad_rows)} problem row(s) in {meta}:\n" + "\n".join(lines))
    skipped = ["; ".join(row_msgs) for row_msgs in bad_rows]
    if skipped:
        logger.warning(
            "skipped %d of %d row(s) in %s; first problem: %s", len(skipped), len(rows), meta, skipped[0]
        )
    return LoadResult(samples=samples, skipped=skipped, clips_too_long=clips_too_long)


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
