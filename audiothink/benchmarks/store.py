"""Predictions as an append-only JSONL file: what makes an evaluation resumable.

The first line is a header naming everything that decides a prediction for every item: the model and
adapter by the contents of their files (:func:`folder_fingerprint`, not their paths), the prompt, the
generation settings, the benchmark, the audio replacement, the forced mode. Each later line is one finished
item, written and flushed to disk as soon as its batch is decoded, so a crash or a kill loses at most the
batch in flight; each record carries ``input``, a hash of what the model was shown for that item (question,
choices, and the bytes of every audio clip: :func:`item_fingerprint`).

A rerun into the same folder reads the file and predicts only the items that have no usable record yet:
- a header that differs from the run's (other weights at the same ``model.path``, another prompt, ...) is
  refused (:class:`StoreMismatch`, naming what changed): predictions of another model or settings are never
  mixed in, and the user chooses a new folder or ``eval.restart=true``;
- a record whose ``input`` differs from the item's (metadata or audio edited in place) is set aside and
  the item predicted again (one log line names how many and which); answers are never stored, so every
  item is scored against the metadata as it is now;
- a failed item is retried (by default);
- a torn line (a write cut short by a crash, or a damaged line in the middle) is dropped with a warning
  naming the file and line, and its item predicted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["PredictionStore", "StoreMismatch", "file_sha256", "folder_fingerprint", "item_fingerprint"]

log = logging.getLogger("audiothink.evaluate")


class StoreMismatch(ValueError):
    """The folder holds predictions made with other settings (or is not a predictions file)."""


# --------------------------------------------------------------------------- content fingerprints

# Files of a checkpoint folder that inference never reads (training state): not part of the model's identity.
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
_NOT_MODEL = (".md", ".png", ".jpg", ".jpeg", ".gif", ".lock")
_CHUNK = 8 << 20
# header fields that are contents, in words (StoreMismatch's message)
_FIELD_WORDS = {"model_files": "the files at model.path (weights, config, tokenizer)",
                "adapter_files": "the adapter's files"}


def _hash_cache_path() -> Path:
    return Path(os.environ.get("AUDIOTHINK_CACHE") or "~/.cache/audiothink").expanduser() / "file_hashes.json"


def _stamp(st: os.stat_result) -> list[int]:
    # ctime cannot be set by copying tools (cp -p, rsync -t, tar keep mtime only): a replaced file always differs
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(paths: list[str | os.PathLike]) -> list[str | None]:
    """The SHA-256 of each file's bytes (None for a path that is not a readable file).

    Every byte is hashed, once per version of a file: the digests are kept in
    ``$AUDIOTHINK_CACHE/file_hashes.json`` (default ``~/.cache/audiothink``) under the file's size, mtime,
    ctime and inode, and a file whose stamp differs is hashed again. A 7B model's 15 GB take 10-30 s the first
    time (the files are read next by the model load anyway, from the page cache then), a stat each later time.
    """
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    out: list[str | None] = [None] * len(paths)
    todo: list[tuple[int, Path, list[int]]] = []
    for i, raw in enumerate(paths):
        path = Path(os.path.abspath(raw))
        try:
            st = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        hit = cache.get(str(path))
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == _stamp(st):
            out[i] = hit[1]
        else:
            todo.append((i, path, _stamp(st)))
    if not todo:
        return out

    def one(job):
        try:
            return _sha256(job[1])
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:  # hashlib releases the GIL on big chunks
        for (i, path, stamp), digest in zip(todo, pool.map(one, todo)):
            out[i] = digest
            if digest is not None:
                cache[str(path)] = [stamp, digest]
    try:  # only speed depends on it: a lost or concurrent write means hashing again
        cache = {k: v for k, v in cache.items() if os.path.exists(k)}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return out


def folder_fingerprint(path: str | os.PathLike | None) -> str | None:
    """What a model or adapter folder holds, as one digest of its files' names and SHA-256 contents.

    Every top-level file counts (weights, config, tokenizer, chat template: all decide a prediction) except a
    checkpoint's training state (optimizer, scheduler, RNG state, trainer_state.json) and docs. None when
    ``path`` is not a local folder (a hub id: only its name is known).
    """
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        return None
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                   and f.name not in _TRAINING_STATE and not f.name.startswith("rng_state")
                   and f.suffix.lower() not in _NOT_MODEL)
    digests = file_sha256(files)
    h = hashlib.sha256(json.dumps([[f.name, d] for f, d in zip(files, digests)]).encode())
    return f"sha256:{h.hexdigest()[:16]} ({len(files)} files)"


def item_fingerprint(question: str, choices, audio_digests) -> str:
    """What the model is shown for one item: question, choices and the bytes of each clip, as one digest."""
    text = json.dumps([question, list(choices), list(audio_digests)], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- the store


class PredictionStore:
    """``records``: key -> the usable record of each item; ``inputs``: key -> the item's current
    :func:`item_fingerprint` (a stored record for other contents is set aside in ``stale``). The header line
    is written with the first record, so a run that stops before predicting anything leaves no file."""

    def __init__(self, path: str | os.PathLike, header: dict, *, restart: bool = False,
                 inputs: dict[str, str] | None = None, changed: str = "question, choices or audio",
                 redone: str = "predicted again", restart_key: str = "eval.restart"):
        self.path = Path(path)
        # the stale records' warning: what an item's input is made of, and what happens to a changed one
        self._changed, self._redone = changed, redone
        self._restart_key = restart_key  # the setting that starts over, named in the mismatch messages
        self.header = json.loads(json.dumps(header))  # plain JSON types, as they will read back
        self.inputs = dict(inputs or {})
        self.records: dict[str, dict] = {}
        self.stale: dict[str, dict] = {}  # records made for other item contents: not used, predicted again
        self.dropped_lines: list[int] = []  # line numbers of torn records dropped on load
        self.dropped_partial_line = False
        self._has_header = False
        if restart and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        if lines[-1]:
            # a write cut short by a crash: keep every complete line, drop the fragment
            with self.path.open("r+b") as f:
                f.truncate(len(raw) - len(lines[-1]))
            self.dropped_partial_line = True
            self.dropped_lines.append(len(lines))
        lines = lines[:-1]
        if not lines:
            return
        try:
            first = json.loads(lines[0].decode("utf-8"))
        except ValueError as exc:
            raise StoreMismatch(f"{self.path}:1: not a predictions file (the first line is not its header: {exc}). "
                                "Write into a new folder (hydra.run.dir=...) or start over with "
                                f"{self._restart_key}=true.") from exc
        old = first.get("_header") if isinstance(first, dict) else None
        if old is None:
            raise StoreMismatch(f"{self.path}: not a predictions file (no header line)")
        if old != self.header:
            diff = sorted(k for k in set(old) | set(self.header) if old.get(k) != self.header.get(k))
            details = "; ".join(f"{_FIELD_WORDS.get(k, k)}: {old.get(k)!r} -> {self.header.get(k)!r}" for k in diff)
            raise StoreMismatch(
                f"{self.path} holds predictions made with another model or other settings ({details}). "
                f"Write into a new folder (hydra.run.dir=...) or start over with {self._restart_key}=true."
            )
        self._has_header = True
        kept = [lines[0]]
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError:  # not UTF-8, or not JSON
                rec = None
            if not (isinstance(rec, dict) and isinstance(rec.get("key"), str)):
                self.dropped_lines.append(lineno)
                continue
            kept.append(line)
            self.records[rec["key"]] = rec  # a later record (a retried failure) supersedes
        torn = [n for n in self.dropped_lines if n <= len(lines)]  # not the fragment, already cut off
        if self.dropped_lines:
            one = len(self.dropped_lines) == 1
            log.warning("%s: %s %s %s (a write cut short, or damaged); dropped, %s predicted again", self.path,
                        "line" if one else "lines", ", ".join(map(str, self.dropped_lines)),
                        "is not a complete record" if one else "are not complete records",
                        "its item is" if one else "their items are")
        if torn:  # rewrite without them, atomically, so the next run reads a clean file
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            with tmp.open("wb") as f:
                f.write(b"\n".join(kept) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        for key, rec in list(self.records.items()):
            want = self.inputs.get(key)
            if want is not None and rec.get("input") != want:
                self.stale[key] = self.records.pop(key)
        if self.stale:
            ids = [str(r.get("id", k)) for k, r in self.stale.items()]
            log.warning("%s: %d stored prediction(s) were made for other item contents (%s changed since: id "
                        "%s%s); %s", self.path, len(ids), self._changed, ", ".join(ids[:5]),
                        ", …" if len(ids) > 5 else "", self._redone)

    def _write_lines(self, rows: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self, key: str, *, retry_failed: bool = True) -> bool:
        rec = self.records.get(key)
        if rec is None:
            return False
        return not (retry_failed and rec.get("error"))

    def append(self, records: list[dict]) -> None:
        """Write finished records to disk (flushed and synced) before anything else happens; each is stamped
        with its item's ``input`` fingerprint."""
        if not records:
            return
        for rec in records:
            if rec["key"] in self.inputs:
                rec["input"] = self.inputs[rec["key"]]
        rows = records if self._has_header else [{"_header": self.header}, *records]
        if not self._has_header:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lines(rows)
        self._has_header = True
        for rec in records:
            self.records[rec["key"]] = rec
