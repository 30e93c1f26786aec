"""MMAU and MMAR from Hugging Face hub copies: parquet (a file or a folder of them) or a ``save_to_disk`` folder.

Most people have a hub copy rather than the official layout (a metadata file and its audio folder). The copies
differ in their columns and in how they write the choices and the answer; each known copy (``LAYOUTS``) is
mapped onto the official items, so that the same official rule (:mod:`audiothink.scoring`) scores the same
items, and the submission file is the official items plus the predictions:

=============================== ===== ==================================================================
copy (``benchmark.layout``)     kind  columns -> official fields
=============================== ===== ==================================================================
``gamma-lab-umd/MMAU-test-mini`` mmau ``context`` (audio), ``instruction`` -> question, ``choices``, ``answer``,
                                      ``other_attributes`` (id, task, difficulty, ... as a dict or JSON text)
``AudioLLMs/MMAU-mini``         mmau  the same columns; choices written ``"(A) x"``, the answer ``"(A) x"``
``lmms-lab-audio/mmau``         mmau  ``audio``; the official fields as columns, ``choices`` as JSON text
``BoJack/MMAR``                 mmar  the official MMAR fields as columns; audio from ``audio_path`` (joined
                                      onto ``benchmark.data_root``) or an embedded ``audio`` column
``ngqtrung/mmar``               mmar  ``audio``, ``id``, ``question``, choices ``"A. x"``, the answer a letter,
                                      ``modality``, ``category``, ``subcategory`` -> sub-category
=============================== ===== ==================================================================

A lettered choice loses its letter (exactly the ``"(A) "`` / ``"A. "`` prefix, nothing else) and a letter
answer becomes the text of the option it names, so the item reads as the official file writes it. The layout is
detected from the columns and the first rows' values, or named with ``benchmark.layout``; a copy that matches
no layout is one error listing its columns and the known layouts. Where each mapping comes from, and which
parts could not be checked, is in data_cards/hub_copies.md.

Embedded audio is written unchanged to files (``benchmark.cache_dir``) and read with soundfile like every
other clip (torchcodec is not needed): the bytes of an embedded WAV are the official file's bytes.

With the official metadata too (``benchmark.meta``), the copy is compared with it item by item: the same ids,
answers and choices. Differences are listed (file, id, field, both values) and the run refuses
(``benchmark.on_mismatch=error``), or scores the official items with the copy's audio and writes and prints the
list (``benchmark.on_mismatch=official``); a copy is never scored silently on answers that differ.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from audiothink.benchmarks.base import Benchmark, MetaProblems, read_metadata, unique_keys
from audiothink.data import DataError

__all__ = ["LAYOUTS", "ON_MISMATCH", "Layout", "detect_layout", "load_hub", "compare_with_official"]

log = logging.getLogger("audiothink.evaluate")

ON_MISMATCH = ("error", "official")

# the official fields, in the official files' order (a mapped item is written in this order, then the rest)
MMAU_FIELDS = ("id", "audio_id", "question", "choices", "answer", "dataset", "task", "split", "category",
               "sub-category", "difficulty")
MMAR_FIELDS = ("id", "audio_path", "question", "choices", "answer", "modality", "category", "sub-category",
               "language", "source", "url", "timestamp")

_PAREN = re.compile(r"^\(([A-Z])\)(?: |$)")  # "(A) x" (AudioLLMs/MMAU-mini)
_DOT = re.compile(r"^([A-Z])\.(?: |$)")  # "A. x" (ngqtrung/mmar)
_LETTER = re.compile(r"^\(?([A-Z])\)?\.?$")  # "B", "(B)", "B." as a whole answer


@dataclass(frozen=True)
class Layout:
    """One hub copy: which benchmark it holds, the columns it must have, its audio column, its row mapper."""

    kind: str  # mmau | mmar
    required: tuple[str, ...]
    audio: str | None  # the column with the audio (embedded bytes or a path); None: audio_path names files
    mapper: Callable[[dict], tuple[dict, list[tuple[str, str]]]]
    what: str


def _ordered(item: dict, order: tuple[str, ...]) -> dict:
    """``item`` with the official fields first, in the official order, then the rest as they came."""
    return {**{k: item[k] for k in order if k in item}, **{k: v for k, v in item.items() if k not in order}}


def _attributes(value: Any) -> tuple[dict, str | None]:
    """``other_attributes`` as a dict: a dict (an Arrow struct), JSON text, or a Python literal."""
    if isinstance(value, dict):
        return value, None
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, TypeError):
                continue
            if isinstance(parsed, dict):
                return parsed, None
    return {}, f"expected a dict (or its JSON text) with id, task, ..., got {value!r:.80}"


def _unletter(choices: Any, pattern: re.Pattern) -> tuple[list | None, str | None]:
    """Lettered choices (``"(A) x"``, ``"A. x"``) without their letters; the letters must run A, B, C, ..."""
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        return None, f"expected a list of lettered strings, got {choices!r:.80}"
    out = []
    for i, c in enumerate(choices):
        m = pattern.match(c)
        if not m or m.group(1) != chr(65 + i):
            return None, f"choice {i + 1} should start with the letter {chr(65 + i)} ({pattern.pattern}), got {c!r}"
        out.append(c[m.end():])
    return out, None


def _is_lettered(rows: list[dict], column: str, pattern: re.Pattern) -> bool:
    lists = [r.get(column) for r in rows if isinstance(r.get(column), list) and r.get(column)]
    return bool(lists) and all(_unletter(c, pattern)[1] is None for c in lists)


def _map_gamma(record: dict, lettered: bool = False) -> tuple[dict, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    attrs, problem = _attributes(record.get("other_attributes"))
    if problem:
        problems.append(("other_attributes", problem))
    choices = record.get("choices")
    answer = record.get("answer")
    if lettered:
        choices, problem = _unletter(choices, _PAREN)
        if problem:
            problems.append(("choices", problem))
        elif isinstance(answer, str) and answer.strip():
            m = _PAREN.match(answer)
            k = ord(m.group(1)) - 65 if m else -1
            if not m or k >= len(choices):
                problems.append(("answer", f"expected '(<letter>) <text>' naming one of the {len(choices)} "
                                           f"choices, got {answer!r}"))
            elif answer[m.end():] != choices[k]:
                problems.append(("answer", f"{answer!r} names option {m.group(1)}, whose text is {choices[k]!r}"))
            else:
                answer = choices[k]  # the option's text, as the official file writes the answer
    item = {k: v for k, v in attrs.items() if v is not None}
    if "id" not in item and record.get("id") is not None:
        item["id"] = record["id"]
    item.update(question=record.get("instruction"), choices=list(choices) if isinstance(choices, list) else choices)
    if answer is not None:
        item["answer"] = answer
    return _ordered(item, MMAU_FIELDS), problems


def _map_audiollms(record: dict) -> tuple[dict, list[tuple[str, str]]]:
    return _map_gamma(record, lettered=True)


def _map_lmms(record: dict) -> tuple[dict, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    item = {k: v for k, v in record.items() if k != "audio" and (v is not None or k in MMAU_FIELDS)}
    raw = record.get("choices")
    if isinstance(raw, str):
        try:
            item["choices"] = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(("choices", f"expected a JSON list, got {raw!r:.80} ({exc.msg})"))
    if item.get("answer") is None:
        item.pop("answer", None)  # the test split withholds it, as the official file does
    return _ordered(item, MMAU_FIELDS), problems


def _map_bojack(record: dict) -> tuple[dict, list[tuple[str, str]]]:
    item = {k: v for k, v in record.items() if k != "audio" and (v is not None or k in MMAR_FIELDS)}
    return _ordered(item, MMAR_FIELDS), []


def _map_ngqtrung(record: dict) -> tuple[dict, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    item = {k: v for k, v in record.items() if k not in ("audio", "subcategory") and v is not None}
    if "sub-category" not in item and record.get("subcategory") is not None:
        item["sub-category"] = record["subcategory"]
    choices, problem = _unletter(record.get("choices"), _DOT)
    if problem:
        problems.append(("choices", problem))
    else:
        item["choices"] = choices
        answer = record.get("answer")
        if isinstance(answer, str) and answer.strip():
            m = _LETTER.match(answer.strip())
            if not m or ord(m.group(1)) - 65 >= len(choices):
                problems.append(("answer", f"expected the letter of one of the {len(choices)} choices, got {answer!r}"))
            else:
                item["answer"] = choices[ord(m.group(1)) - 65]  # the option's text, as the official file has it
    return _ordered(item, MMAR_FIELDS), problems


LAYOUTS: dict[str, Layout] = {
    "gamma-lab-umd/MMAU-test-mini": Layout(
        "mmau", ("context", "instruction", "choices", "other_attributes"), "context", _map_gamma,
        "context (audio), instruction, choices (option texts), answer (text), other_attributes (id, task, ...)"),
    "AudioLLMs/MMAU-mini": Layout(
        "mmau", ("context", "instruction", "choices", "other_attributes"), "context", _map_audiollms,
        "context (audio), instruction, choices ('(A) x'), answer ('(A) x'), other_attributes (id, task, ...)"),
    "lmms-lab-audio/mmau": Layout(
        "mmau", ("audio", "question", "choices", "task"), "audio", _map_lmms,
        "audio, id, question, choices (JSON text), answer, task, difficulty, sub-category, ..."),
    "BoJack/MMAR": Layout(
        "mmar", ("id", "audio_path", "question", "choices", "answer", "modality", "category"), None, _map_bojack,
        "the official MMAR fields (id, audio_path, question, choices, answer, modality, category, ...)"),
    "ngqtrung/mmar": Layout(
        "mmar", ("audio", "question", "choices", "answer"), "audio", _map_ngqtrung,
        "audio, id, question, choices ('A. x'), answer (a letter), modality, category, subcategory"),
}


def detect_layout(columns: list[str], rows: list[dict]) -> str | None:
    """The ``LAYOUTS`` key whose columns (and, where two share them, values) ``columns`` / ``rows`` match."""
    cols = set(columns)

    def has(layout: str) -> bool:
        return set(LAYOUTS[layout].required) <= cols

    if has("gamma-lab-umd/MMAU-test-mini"):
        return "AudioLLMs/MMAU-mini" if _is_lettered(rows, "choices", _PAREN) else "gamma-lab-umd/MMAU-test-mini"
    if has("ngqtrung/mmar") and _is_lettered(rows, "choices", _DOT):
        return "ngqtrung/mmar"
    if has("BoJack/MMAR") and not _is_lettered(rows, "choices", _DOT):
        return "BoJack/MMAR"
    if has("lmms-lab-audio/mmau") and any(isinstance(r.get("choices"), str) for r in rows):
        return "lmms-lab-audio/mmau"
    return None


def _known_layouts() -> str:
    return "; ".join(f"{name} ({layout.kind}): {layout.what}" for name, layout in LAYOUTS.items())


# --------------------------------------------------------------------------- reading the copy


def _parquet_split(path: Path, split: str | None) -> list[Path]:
    """The parquet files of a folder: those of ``split`` (``<split>-00000-of-00001.parquet``, ``<split>.parquet``
    or under a ``<split>/`` folder), or all of them when they belong to one split only."""
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())

    def split_of(f: Path) -> str:
        m = re.match(r"(.+?)(-\d{5}-of-\d{5})?$", f.stem)
        return m.group(1) if m else f.stem

    if split:
        chosen = [f for f in files if split_of(f) == split or split in f.relative_to(path).parts[:-1]]
        if not chosen:
            raise DataError(f"{path}: no parquet file of split {split!r} (files: "
                            f"{', '.join(f.name for f in files[:10]) or 'none'}); set benchmark.split")
        return chosen
    splits = sorted({split_of(f) for f in files})
    if len(splits) > 1:
        raise DataError(f"{path}: parquet files of several splits ({', '.join(splits)}): set benchmark.split to the "
                        "one to evaluate (for MMAU test-mini it is usually test_mini), or benchmark.source to a file")
    return files


def _files_sha256(files: list[Path]) -> str:
    from audiothink.benchmarks.store import file_sha256

    digests = file_sha256(files)
    h = hashlib.sha256(json.dumps([[f.name, d] for f, d in zip(files, digests)]).encode())
    return h.hexdigest()


def _revision(path: Path) -> str | None:
    """The hub commit when the copy is read from a hub cache snapshot (``.../snapshots/<40 hex>/...``)."""
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", path.resolve().as_posix())
    return m.group(1) if m else None


def load_hub(
    source: str | os.PathLike,
    kind: str,
    *,
    cache_dir: str | os.PathLike,
    layout: str | None = None,
    split: str | None = None,
    data_root: str | os.PathLike | None = None,
    official: str | os.PathLike | None = None,
    on_mismatch: str = "error",
    name: str | None = None,
    version: str | None = None,
) -> Benchmark:
    """A hub copy of MMAU (``kind="mmau"``) or MMAR (``"mmar"``) as a :class:`Benchmark` of official items.

    ``source``: a parquet file, a folder of parquet files (``split`` picks a split's files when the folder
    holds several) or a ``save_to_disk`` folder (``split`` picks a DatasetDict's split). ``layout``: a
    ``LAYOUTS`` key; None detects it. Embedded audio is written to ``cache_dir`` (once; reused by a rerun);
    audio paths in the copy are joined onto ``data_root`` (default: the copy's folder). ``official``: the
    official metadata file to compare with (see the module docstring for ``on_mismatch``).

    Raises DataError: no such copy, an unknown layout (the columns and the known layouts listed), the other
    benchmark's copy, rows that cannot be mapped (all listed), or differences from the official metadata
    with ``on_mismatch="error"``.
    """
    from audiothink.sources.hf import _open

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: hub copy not found (benchmark.source)")
    saved = path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    if saved and (path / "dataset_dict.json").is_file() and not split:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
        raise DataError(f"{path}: a saved DatasetDict with splits {splits}: set benchmark.split to the one to evaluate")
    if path.is_dir() and not saved:
        parts = []
        for f in _parquet_split(path, split):
            parts += _open(f, None)[0]
        sources, files, chosen = parts, [Path(label) for label, _ in parts], split
        if not files:
            raise DataError(f"{path}: neither a save_to_disk folder (no state.json or dataset_dict.json) nor a "
                            "folder of parquet files")
    else:
        sources, files, chosen = _open(path, split)
    try:
        return _load(path, kind, sources, files, chosen, saved, cache_dir=cache_dir, layout=layout, split=split,
                     data_root=data_root, official=official, on_mismatch=on_mismatch, name=name, version=version)
    finally:
        for _, it in sources:  # an error leaves parquet readers open: close them now, not at interpreter exit
            close = getattr(it, "close", None)
            if close is not None:
                close()


def _load(path: Path, kind: str, sources, files, chosen, saved: bool, *, cache_dir, layout, split, data_root,
          official, on_mismatch, name, version) -> Benchmark:
    from audiothink.benchmarks.mmar import build_mmar
    from audiothink.benchmarks.mmau import build_mmau, guess_version
    from audiothink.sources.hf import _AudioCache, _cache_key, _guarded, _resolve_audio

    batches = [(label, _guarded(label, it)) for label, it in sources]

    # the first rows decide the layout (where two copies share columns, their values tell them apart)
    first_label, first_iter = batches[0]
    first = next(first_iter, None)
    if first is None:
        raise DataError(f"{path}: no rows")
    columns = list(first.schema.names)
    head_rows = first.to_pylist()
    detected = detect_layout(columns, head_rows)
    chosen_layout = layout or detected
    if chosen_layout is None:
        raise DataError(f"{path}: its columns ({', '.join(columns)}) match no known hub copy; the known layouts: "
                        f"{_known_layouts()}. Convert it to the official layout (data_cards/) or to one of these")
    spec = LAYOUTS[chosen_layout]
    missing = [c for c in spec.required if c not in columns]
    if missing:
        raise DataError(f"{path}: benchmark.layout={chosen_layout} needs the column(s) {', '.join(missing)}; the copy "
                        f"has {', '.join(columns)} (detected layout: {detected or 'none'})")
    if spec.kind != kind:
        raise DataError(f"{path}: is a copy of {spec.kind.upper()} (layout {chosen_layout}), not of {kind.upper()}: "
                        f"use benchmark={'mmar' if spec.kind == 'mmar' else 'mmau_test_mini'}")

    audio_col = spec.audio if spec.audio in columns else ("audio" if "audio" in columns else None)
    cache = _AudioCache(Path(cache_dir) / _cache_key(path, split, audio_col or "", files))
    root = Path(os.path.abspath(data_root if data_root is not None else (path if path.is_dir() else path.parent)))
    problems = MetaProblems(path)
    rows: list[tuple[str, dict]] = []
    audio: list[str | None] = []

    def tables():
        yield first_label, first
        for t in first_iter:
            yield first_label, t
        for label, it in batches[1:]:
            for t in it:
                yield label, t

    index, local, last = 0, 0, None
    for label, table in tables():
        if label != last:
            local, last = 0, label
        for record in table.to_pylist():
            loc = f"{Path(label).name}:{local}"
            item, mapped = spec.mapper(record)
            for field_name, reason in mapped:
                problems.add(loc, item, field_name, reason)
            clip: str | None = None
            if audio_col is not None:
                resolved, problem = _resolve_audio(record.get(audio_col), index, cache)
                if problem is not None or not isinstance(resolved, str):
                    problems.add(loc, item, audio_col, problem or f"expected one audio clip, got {resolved!r:.80}")
                else:
                    clip = resolved if os.path.isabs(resolved) else os.path.abspath(root / resolved)
            elif isinstance(item.get("audio_path"), str) and item["audio_path"].strip():
                clip = os.path.abspath(root / item["audio_path"].strip())
            else:
                problems.add(loc, item, "audio_path", "missing (and the copy has no audio column)")
            rows.append((loc, item))
            audio.append(clip)
            index += 1
            local += 1
    if cache.written or cache.reused:
        log.info("%s: %d embedded clips are audio files in %s (%d written now, %d reused)", path,
                 cache.written + cache.reused, cache.folder, cache.written, cache.reused)

    differences: list[dict] = []
    # rows that cannot be mapped, or have no id, cannot be matched: their problems are listed first (by the builder)
    if official is not None and not problems.lines and all(it.get("id") not in (None, "") for _, it in rows):
        off_rows, _ = read_metadata(official)
        differences = compare_with_official([it for _, it in rows], [loc for loc, _ in rows], off_rows, Path(official))
        if differences:
            lines = [difference_line(d) for d in differences]
            ids_differ = any(d["field"] == "id" for d in differences)
            if on_mismatch != "official" or ids_differ:
                why = ("the two hold different items, which no setting scores as the official benchmark"
                       if ids_differ else
                       "benchmark.on_mismatch=official scores the official items with the copy's audio, the list "
                       "written to results.json and printed")
                shown = "\n".join(lines[:50]) + (f"\n… and {len(lines) - 50} more" if len(lines) > 50 else "")
                raise DataError(f"hub copy {path} ({chosen_layout}) differs from the official metadata {official} in "
                                f"{len(lines)} place(s); it is not scored ({why}):\n{shown}")
            by_key = dict(zip(unique_keys([str(it.get("id")) for _, it in off_rows]), (it for _, it in off_rows)))
            keys = unique_keys([str(it.get("id")) for _, it in rows])
            rows = [(loc, dict(by_key[k])) for (loc, _), k in zip(rows, keys)]

    container = "json" if kind == "mmau" else "jsonl"
    build = build_mmau if kind == "mmau" else build_mmar
    bench = build(rows, path, root, container=container, name=name or kind,
                  version=version or (guess_version(path) if kind == "mmau" else None), audio=audio, problems=problems)
    bench.source = {
        "path": str(path), "layout": chosen_layout, "detected_layout": detected,
        "format": "save_to_disk" if saved else "parquet", "split": chosen,
        "files": [str(f) for f in files], "sha256": _files_sha256(files), "revision": _revision(path),
        "official_metadata": str(official) if official is not None else None, "checked": official is not None,
        "on_mismatch": on_mismatch, "differences": differences, "audio_files": str(cache.folder) if audio_col else None,
    }
    return bench


# --------------------------------------------------------------------------- the official metadata


def compare_with_official(items: list[dict], locations: list[str], official_rows: list[tuple[Any, Any]],
                          official_path: Path) -> list[dict]:
    """The differences between a copy's mapped items and the official metadata's, item by item.

    Items are matched by id (repeated ids as ``id#2``, ...). One dict per difference: ``file`` (the copy's
    file and row, or the official file), ``id``, ``field`` (``id``: the item is on one side only; ``answer``;
    ``choices``), ``copy`` and ``official`` (the two values; None where the item is absent).
    """
    official = [it for _, it in official_rows if isinstance(it, dict)]
    off_keys = unique_keys([str(it.get("id")) for it in official])
    copy_keys = unique_keys([str(it.get("id")) for it in items])
    by_key = dict(zip(off_keys, official))
    out: list[dict] = []
    for key, item, loc in zip(copy_keys, items, locations):
        off = by_key.get(key)
        if off is None:
            out.append({"file": loc, "id": key, "field": "id", "copy": key, "official": None})
            continue
        for name in ("answer", "choices"):
            a, b = item.get(name), off.get(name)
            if name == "answer":
                a, b = a or "", b or ""  # absent and empty are the same withheld answer (MMAU test)
            if a != b:
                out.append({"file": loc, "id": key, "field": name, "copy": a, "official": b})
    seen = set(copy_keys)
    out += [{"file": str(official_path), "id": k, "field": "id", "copy": None, "official": k}
            for k in off_keys if k not in seen]
    return out


def difference_line(d: dict) -> str:
    """One difference as a line: ``<file> id=<id>: <field>: copy <value> / official <value>``."""
    def show(v):
        return "(absent)" if v is None else json.dumps(v, ensure_ascii=False)

    return f"{d['file']} id={d['id']}: {d['field']}: copy {show(d['copy'])} / official {show(d['official'])}"
