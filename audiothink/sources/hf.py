"""Hugging Face ``datasets`` on disk: a ``save_to_disk`` folder (Dataset or DatasetDict) or parquet files.

Rows are read as Arrow, never through ``datasets``' own audio decoding (which needs torchcodec), and
mapped onto the unified schema with a :class:`~audiothink.sources.mapping.FieldMap`. The audio
column may hold, per row, one value or a list of them (several clips):

- a path string, or an ``Audio`` cell ``{"bytes": None, "path": "..."}``: used as a path (relative
  paths are joined onto ``audio_root``, default the dataset's folder);
- an ``Audio`` cell with ``bytes`` (the encoded file, as ``push_to_hub`` / parquet exports embed
  it): written unchanged to ``<cache_dir>/<key>/<row>-<clip>.<ext>``;
- a decoded ``{"array": [...], "sampling_rate": N}``: written as a float WAV (lossless; NaN kept, so
  validation sees it) in the same place. 2-D arrays are ``(channels, samples)`` when the first axis
  is the shorter one and at most 8 long, else ``(samples, channels)``.

The trainer then loads every clip by path like any other. ``<key>`` is a hash of the dataset path,
split, audio column and the data files' sizes and times, so a changed dataset gets fresh files and a
rerun reuses the old ones; the log and ``LoadResult.counts`` say how many were written and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import soundfile as sf

from audiothink.data import DataError, LoadResult, RawRow, RowChecks, load_rows
from audiothink.sources.mapping import FieldMap, RowMapping, map_row

__all__ = ["load_hf"]

log = logging.getLogger(__name__)

_BATCH_ROWS = 64
_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au", ".caf", ".w64")
_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"FORM", ".aiff"),
          (b"\xff\xfb", ".mp3"), (b"\xff\xf3", ".mp3"), (b"\xff\xf2", ".mp3"))
_RATE_KEYS = ("sampling_rate", "sample_rate", "sr")
_SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval")


# --------------------------------------------------------------------------- opening


def _arrow_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowException, OSError, ValueError)


def _parquet_files(path: Path, split: str | None) -> tuple[list[Path], bool]:
    """``(files, whether split chose among them)``: a file named directly is read whole, whatever its name."""
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(p) for p in _glob(str(path)))
    elif path.is_file():
        return [path], False
    else:
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if split and files:
        def names(split_name: str) -> list[Path]:
            pattern = re.compile(rf"(^|[/_.-]){re.escape(split_name)}([/_.-]|$)")
            return [f for f in files if pattern.search(f.relative_to(path).as_posix() if path.is_dir() else f.name)]

        chosen = names(split)
        # One file that names no split at all is the whole data set; anything else must name the split.
        unnamed = len(files) == 1 and not any(names(s) for s in _SPLIT_NAMES)
        if not chosen and not unnamed:
            listed = ", ".join(f.name for f in files[:10])
            raise DataError(f"{path}: no parquet file names split {split!r} (files: {listed})")
        return chosen or files, bool(chosen)
    return files, False


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True)


def _iter_parquet(file: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        for batch in reader.iter_batches(batch_size=_BATCH_ROWS):
            yield pa.Table.from_batches([batch])
    except _arrow_errors() as exc:
        raise DataError(f"{file}: unreadable parquet file ({exc})") from exc


def _open(path: Path, split: str | None) -> tuple[list[tuple[str, Iterator[Any]]], list[Path], str | None]:
    """``([(location label, Arrow batches), ...], data files, the split chosen or None)`` for a saved dataset
    or parquet: the split is None where it chose nothing (a Dataset, one parquet file named directly)."""
    if not any(ch in str(path) for ch in "*?[") and not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        import datasets

        try:
            obj = datasets.load_from_disk(str(path))
        except (FileNotFoundError, *_arrow_errors()) as exc:
            raise DataError(f"{path}: unreadable saved dataset ({exc})") from exc
        label, chosen = str(path), None
        if isinstance(obj, datasets.DatasetDict):
            if not split:
                raise DataError(f"{path}: a DatasetDict with splits {sorted(obj)}; choose one (data.train_split)")
            if split not in obj:
                raise DataError(f"{path}: no split {split!r}; the splits are {sorted(obj)}")
            obj, label, chosen = obj[split], str(path / split), split
        files = [Path(f["filename"]) for f in obj.cache_files]
        return [(label, obj.with_format("arrow").iter(batch_size=_BATCH_ROWS))], files, chosen
    files, by_split = _parquet_files(path, split)
    if not files:
        raise DataError(
            f"{path}: neither a saved dataset (no state.json or dataset_dict.json) nor parquet file(s)"
        )
    return [(str(f), _iter_parquet(f)) for f in files], files, split if by_split else None


def _cache_key(path: Path, split: str | None, column: str, files: list[Path]) -> str:
    stamp = []
    for f in files:
        st = f.stat()
        stamp.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    text = json.dumps([os.path.abspath(path), split, column, stamp])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- audio cells


class _AudioCache:
    """Writes in-memory audio to files under one folder, atomically, reusing files already there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written = 0
        self.reused = 0

    def _target(self, name: str) -> tuple[Path, bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        return path, path.is_file()

    def _commit(self, tmp: Path, path: Path) -> str:
        os.replace(tmp, path)
        self.written += 1
        return str(path)

    def put_bytes(self, data: bytes, stem: str, hint: Any) -> str:
        # The content decides (soundfile reads by content); the original name only when it is unknown.
        suffix = next((ext for magic, ext in _MAGIC if data.startswith(magic)), "")
        if not suffix:
            hinted = Path(hint).suffix.lower() if isinstance(hint, str) else ""
            suffix = hinted if hinted in _AUDIO_SUFFIXES else ".bin"
        path, exists = self._target(stem + suffix)
        if exists and path.stat().st_size == len(data):
            self.reused += 1
            return str(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        return self._commit(tmp, path)

    def put_array(self, array: np.ndarray, rate: int, stem: str) -> str:
        path, exists = self._target(stem + ".wav")
        if exists:
            self.reused += 1
            return str(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        sf.write(os.fspath(tmp), array, rate, subtype="FLOAT", format="WAV")
        return self._commit(tmp, path)

    def put_array_checked(self, array: np.ndarray, rate: int, stem: str) -> tuple[str | None, str | None]:
        try:
            return self.put_array(array, rate, stem), None
        except (sf.SoundFileError, RuntimeError, ValueError) as exc:
            return None, f"decoded audio array cannot be written as audio ({exc})"


def _as_frames(value: Any) -> np.ndarray:
    """A decoded array as ``(samples,)`` or ``(samples, channels)`` float32."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] <= 8 and arr.shape[0] < arr.shape[1]:
        arr = arr.T  # (channels, samples), as datasets' decoders return multi-channel audio
    if arr.ndim not in (1, 2):
        raise ValueError(f"expected a 1-D or 2-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _cell(value: Any, stem: str, cache: _AudioCache) -> tuple[Any, str | None]:
    """One audio cell -> ``(path or the value unchanged, problem or None)``."""
    if not isinstance(value, dict):
        return value, None  # a path string, or a wrong type the validator will name
    data, array, path = value.get("bytes"), value.get("array"), value.get("path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray)):
            return None, f"audio bytes must be binary, got {type(data).__name__}"
        return cache.put_bytes(bytes(data), stem, path), None
    if array is not None:
        rate = next((value[k] for k in _RATE_KEYS if value.get(k) is not None), None)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            return None, f"decoded audio array needs a positive integer sampling_rate, got {rate!r}"
        try:
            frames = _as_frames(array)
        except (TypeError, ValueError) as exc:
            return None, f"decoded audio array is not numeric audio ({exc})"
        return cache.put_array_checked(frames, rate, stem)
    if isinstance(path, str) and path:
        return path, None
    return None, "empty audio cell (no bytes, array or path)"


def _resolve_audio(value: Any, index: int, cache: _AudioCache) -> tuple[Any, str | None]:
    if isinstance(value, list):
        out = []
        for k, item in enumerate(value):
            resolved, problem = _cell(item, f"{index:08d}-{k}", cache)
            if problem is not None:
                return None, f"clip {k}: {problem}"
            out.append(resolved)
        return out, None
    return _cell(value, f"{index:08d}-0", cache)


# --------------------------------------------------------------------------- loading


def _guarded(label: str, batches: Iterator[Any]) -> Iterator[Any]:
    """Arrow batches; a read error becomes a DataError naming the file (the rows cannot be trusted)."""
    while True:
        try:
            table = next(batches)
        except StopIteration:
            return
        except DataError:
            raise
        except _arrow_errors() as exc:
            raise DataError(f"{label}: unreadable dataset rows ({exc})") from exc
        yield table


def load_hf(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    cache_dir: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    check_audio: bool = True,
    max_seconds: float | None = None,
    checks: RowChecks | None = None,
    fields: FieldMap = FieldMap(),
    answer_format: str = "auto",
    question_rewrite: Mapping[str, str] | None = None,
) -> LoadResult:
    """Load and validate a saved Hugging Face dataset or parquet data, writing in-memory audio to files.

    ``path``: a ``save_to_disk`` folder (``split`` picks a DatasetDict's split), a ``.parquet`` file,
    a folder of them (``split`` keeps files whose path names it, as in ``data/train-00000-of-00002.parquet``)
    or a glob. Problems are reported and skipped as in :func:`audiothink.data.load_samples`, located
    as ``<dataset or parquet file>:<0-based row>``.
    """
    path = Path(path)
    mapping = RowMapping(fields=fields, answer_format=answer_format, question_rewrite=dict(question_rewrite or {}))
    sources, files, chosen = _open(path, split)
    key = _cache_key(path, split, fields.audio, files)
    cache = _AudioCache(Path(cache_dir) / key)
    rewritten = 0

    def rows() -> Iterator[RawRow]:
        nonlocal rewritten
        index = 0  # across files, so clip file names never collide
        for label, batches in sources:
            local = 0
            for table in _guarded(label, batches):
                for record in table.to_pylist():
                    problems: list[tuple[str, str]] = []
                    if fields.audio in record:
                        cell = record[fields.audio]
                        resolved, problem = _resolve_audio(cell, index, cache)
                        if problem is not None:
                            problems.append((fields.audio, problem))
                        record = {**record, fields.audio: resolved}
                    row, mapped, changed = map_row(record, mapping)
                    rewritten += changed
                    yield RawRow(f"{label}:{local}", row, problems + mapped)
                    index += 1
                    local += 1

    root = Path(audio_root) if audio_root is not None else (path if path.is_dir() else path.parent)
    # the split only where it chose the rows: a parquet file named directly is that file, whatever data.*_split says
    source = str(path) if not chosen else f"{path} (split {chosen})"
    result = load_rows(
        rows(), source=source, audio_root=root, on_error=on_error, check_audio=check_audio,
        max_seconds=max_seconds, field_names=fields.display_names(), checks=checks,
    )
    result.counts.update(
        questions_rewritten=rewritten, audio_files_written=cache.written, audio_files_reused=cache.reused
    )
    if cache.written or cache.reused:
        log.info("data: %d in-memory clips of %s are audio files in %s (%d written now, %d reused)",
                 cache.written + cache.reused, source, cache.folder, cache.written, cache.reused)
    return result
