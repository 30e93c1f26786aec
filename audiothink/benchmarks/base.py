"""What every benchmark loader returns, the shared validation of official metadata, and submission files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiothink.data import DataError, Sample

__all__ = ["Benchmark", "MetaProblems", "QUIRKS", "find_quirks", "quirk_summary", "read_metadata", "write_submission"]

# Quirks of the released metadata that the official scorer tolerates: each is accepted as the official
# script treats it, counted per item (``Benchmark.quirks``) and named in results.json, report.md and the
# printed output. Kind -> what it is and what this loader does with it.
QUIRKS: dict[str, str] = {
    "empty_choice": "a choice that is empty or only whitespace (MMAR has 4 items ending in \"\"): it has no "
                    "words, so the official rule ignores it; left out of the prompt, kept in the submission",
    "choice_without_words": "a choice with text but no word characters (e.g. \"?\"): shown in the prompt; the "
                            "official rule can neither reward nor penalise naming it",
    "answer_not_in_choices": "the answer is not one of the choices (an MMAU release had 147): scored by the "
                             "official rule on its words all the same",
    "duplicate_choices": "the same choice twice (after trimming spaces): shown as released",
    "same_word_choices": "two different choices with the same set of words (e.g. \"from near to far\" and "
                         "\"from far to near\"): the official rule counts naming either as correct",
    "label_as_list": "a breakdown label (category, ...) given as a one-element list (MMAU): read as its string",
    "padded_text": "a choice or the answer with leading or trailing spaces: trimmed for the prompt (the "
                   "official rule reads words only)",
    "repeated_id": "an id used by an earlier item too: every item is kept, its key made unique as id#2, ...",
}


@dataclass
class Benchmark:
    """A benchmark as loaded: samples in the unified schema, the original items, and how to slice them.

    ``samples[i]`` and ``items[i]`` are the same question; ``groups[i]`` maps each breakdown dimension to
    the item's value (e.g. ``{"task": "sound", "difficulty": "easy", "sub-category": "..."}``).
    ``keys[i]`` is the item's key in the predictions file: its id, made unique if the metadata repeats it.
    ``scored[i]`` is False for items whose answer is withheld (MMAU test): they get a prediction and a
    submission entry but no score. ``quirks[i]`` names the item's tolerated quirks (keys of ``QUIRKS``).
    """

    name: str
    kind: str  # mmau | mmar | unified
    version: str
    meta_path: Path
    samples: list[Sample]
    items: list[dict]
    groups: list[dict[str, str]]
    dimensions: tuple[str, ...]
    keys: list[str] = field(default_factory=list)
    scored: list[bool] = field(default_factory=list)
    container: str = "json"  # json (a list) or jsonl: the submission file is written the same way
    # fields added to each item in the submission file: name -> which part of the prediction
    submission_fields: dict[str, str] = field(default_factory=dict)
    quirks: list[tuple[str, ...]] = field(default_factory=list)
    # a hub copy (audiothink/benchmarks/hub.py): where it came from, its layout, file hash and revision, and
    # how it compared with the official metadata; None for the official layout
    source: dict | None = None

    def __post_init__(self) -> None:
        n = len(self.samples)
        if not (len(self.items) == len(self.groups) == n):
            raise ValueError("samples, items and groups must have the same length")
        if not self.keys:
            self.keys = unique_keys([s.id for s in self.samples])
        if not self.scored:
            self.scored = [bool(s.answer) for s in self.samples]
        if not self.quirks:
            self.quirks = [() for _ in self.samples]
        repeated = [k != s.id for k, s in zip(self.keys, self.samples)]
        self.quirks = [tuple(q) + (("repeated_id",) if r and "repeated_id" not in q else ())
                       for q, r in zip(self.quirks, repeated)]

    def __len__(self) -> int:
        return len(self.samples)

    def head(self, n: int | None) -> "Benchmark":
        """The first ``n`` items (all for ``None``), e.g. for a smoke run."""
        if n is None or n >= len(self):
            return self
        return Benchmark(
            name=self.name, kind=self.kind, version=self.version, meta_path=self.meta_path,
            samples=self.samples[:n], items=self.items[:n], groups=self.groups[:n], dimensions=self.dimensions,
            keys=self.keys[:n], scored=self.scored[:n], container=self.container,
            submission_fields=self.submission_fields, quirks=self.quirks[:n], source=self.source,
        )


def unique_keys(ids: list[str]) -> list[str]:
    """The ids, with later repeats of an id made unique as ``id#2``, ``id#3``… (first keeps its id)."""
    seen: dict[str, int] = {}
    keys = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        keys.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return keys


class MetaProblems:
    """Collects ``where id=…: field: reason`` lines and raises them as one DataError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, loc: int | str, item: Any, name: str, reason: str) -> None:
        rid = item.get("id") if isinstance(item, dict) else None
        self.lines.append(f"{self.path}:{loc} id={rid if rid not in (None, '') else '?'}: {name}: {reason}")

    def raise_if_any(self) -> None:
        if self.lines:
            shown = self.lines[:50]
            more = f"\n… and {len(self.lines) - 50} more" if len(self.lines) > 50 else ""
            raise DataError(f"{len(self.lines)} problem(s) in {self.path}:\n" + "\n".join(shown) + more)

    # -- typed field readers: return the value or None after recording a problem --

    def text(self, loc, item: dict, name: str, *, required: bool = True) -> str | None:
        if name not in item or item[name] is None:
            if required:
                self.add(loc, item, name, "missing")
            return None
        value = item[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "id":
            return str(value)  # numeric ids are common in hand-made copies; the scorer never reads them
        if not isinstance(value, str):
            self.add(loc, item, name, f"expected a string, got {type(value).__name__}")
            return None
        if required and not value.strip():
            self.add(loc, item, name, "must not be empty")
            return None
        return value

    def choices(self, loc, item: dict) -> list[str] | None:
        """The released choice list. Empty or whitespace-only entries are accepted (a quirk the official
        scorer tolerates: they have no words); non-strings are not (the official scorer fails on them)."""
        value = item.get("choices")
        if value is None:
            self.add(loc, item, "choices", "missing")
            return None
        if not isinstance(value, list) or len(value) < 2:
            self.add(loc, item, "choices", f"expected a list of at least 2 strings, got {value!r}")
            return None
        bad = [c for c in value if not isinstance(c, str)]
        if bad:
            self.add(loc, item, "choices", f"every choice must be a string, got {bad[0]!r} in {value!r}")
            return None
        if not any(c.strip() for c in value):
            self.add(loc, item, "choices", f"every choice is empty: nothing to choose from, got {value!r}")
            return None
        return value

    def label(self, loc, item: dict, name: str) -> str:
        """A breakdown label: a string, or (as in a few MMAU items) a one-element list of one; '' if absent."""
        value = item.get(name)
        if value is None:
            return ""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if isinstance(value, str):
            return value
        self.add(loc, item, name, f"expected a string or a one-element list, got {value!r}")
        return ""


def find_quirks(item: dict, choices: list[str], answer: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The tolerated quirks (keys of ``QUIRKS``) of one valid item: its released ``choices``, its ``answer``
    ('' when withheld) and the names of its breakdown ``labels``."""
    from audiothink.scoring import tokenize

    found = []
    texts = [c.strip() for c in choices if c.strip()]
    if len(texts) < len(choices):
        found.append("empty_choice")
    if any(not tokenize(c) for c in texts):
        found.append("choice_without_words")
    if answer.strip() and answer.strip() not in texts:
        found.append("answer_not_in_choices")
    if len(set(texts)) < len(texts):
        found.append("duplicate_choices")
    distinct = list(dict.fromkeys(texts))
    words = [frozenset(tokenize(c)) for c in distinct if tokenize(c)]
    if len(set(words)) < len(words):
        found.append("same_word_choices")
    if any(isinstance(item.get(name), list) for name in labels):
        found.append("label_as_list")
    if any(c != c.strip() for c in choices if c.strip()) or answer != answer.strip():
        found.append("padded_text")
    return tuple(found)


def quirk_summary(bench: Benchmark, max_ids: int = 10) -> dict[str, dict]:
    """``{kind: {"items": n, "ids": [first ids], "what": description}}`` for the quirks ``bench`` has."""
    out: dict[str, dict] = {}
    for kind in QUIRKS:
        ids = [s.id for s, q in zip(bench.samples, bench.quirks) if kind in q]
        if ids:
            out[kind] = {"items": len(ids), "ids": ids[:max_ids], "what": QUIRKS[kind]}
    return out


# Files that are often given where the metadata is meant: their first bytes, and what they are.
_BINARY_MAGIC = ((b"PAR1", "a parquet file (a Hugging Face hub copy?)"), (b"ARROW1", "an Arrow file (datasets?)"),
                 (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"), (b"RIFF", "a WAV audio file"))


def refuse_binary(path: Path, head: bytes) -> None:
    """A DataError when ``head`` (the file's first bytes) shows a parquet, Arrow, archive or audio file."""
    kind = next((name for magic, name in _BINARY_MAGIC if head.startswith(magic)), None)
    if kind is not None:
        raise DataError(
            f"{path}: looks like {kind}, not the benchmark's metadata. benchmark.meta is the official JSON (a list "
            "of items) or JSONL metadata file, whose audio files it names (data_cards/); a Hugging Face hub copy "
            "(parquet or a save_to_disk folder) is read with benchmark.source=<it> (data_cards/hub_copies.md)")


def read_metadata(path: str | os.PathLike) -> tuple[list[tuple[int, Any]], str]:
    """``([(location, item), …], container)`` from a JSON list (.json) or one object a line (.jsonl).

    The location is the list index for .json and the 1-based line number for .jsonl.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: metadata file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected the benchmark's .json or .jsonl metadata file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read the metadata file ({exc.strerror or exc})") from exc
    refuse_binary(p, raw[:8])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 ({exc.reason} at byte {exc.start}); the loader reads the official "
                        "JSON or JSONL metadata file, which is UTF-8 text") from exc
    if p.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        container = "jsonl"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of items, got {type(data).__name__}")
        rows = list(enumerate(data))
        container = "json"
    if not rows:
        raise DataError(f"{p}: no items")
    return rows, container


def join_audio(root: Path, rel: str) -> str:
    """An item's audio path joined onto the data root (``./audio/x.wav`` -> ``<root>/audio/x.wav``)."""
    return os.path.abspath(root / rel.strip())


def write_submission(bench: Benchmark, records: dict[str, dict], path: str | os.PathLike) -> Path:
    """The original items, in order, plus the prediction fields the official scripts read.

    ``records`` maps item keys to prediction records (``prediction``: the extracted answer text,
    ``think``: the think text or None). A missing record becomes an empty prediction, which the official
    scripts count as wrong — an item is never left out. Every field is written on every item: a direct
    answer's think text is ``""`` (MMAR's rubric script skips an item without ``thinking_prediction``).
    Written like the metadata: a JSON list, or JSONL.
    """
    out = []
    for key, item in zip(bench.keys, bench.items):
        rec = records.get(key, {})
        row = dict(item)
        for name, part in bench.submission_fields.items():
            value = rec.get(part)
            row[name] = value if value is not None else ""
        out.append(row)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        if bench.container == "jsonl":
            for row in out:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            json.dump(out, f, ensure_ascii=False, indent=2)
            f.write("\n")
    tmp.replace(p)
    return p
