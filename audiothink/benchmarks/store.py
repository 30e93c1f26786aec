"""Predictions as an append-only JSONL file: what makes an evaluation resumable.

The first line is a header naming everything that decides a prediction (model, adapter, prompt,
generation settings, benchmark, audio replacement). Each later line is one finished item, written and
flushed to disk as soon as its batch is decoded, so a crash or a kill loses at most the batch in flight.
A rerun into the same folder reads the file, drops a half-written last line, and predicts only the
items that have no record yet (and, by default, retries items whose record is a failure). A header that
differs from the run's settings is an error: predictions made under other settings are never mixed in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["PredictionStore", "StoreMismatch"]


class StoreMismatch(ValueError):
    """The folder holds predictions made with other settings."""


class PredictionStore:
    def __init__(self, path: str | os.PathLike, header: dict, *, restart: bool = False):
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # plain JSON types, as they will read back
        self.records: dict[str, dict] = {}
        self.dropped_partial_line = False
        if restart and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_lines([{"_header": self.header}])

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            # a write cut short by a crash: keep every complete line, drop the fragment
            cut = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)
            raw = raw[:cut]
            self.dropped_partial_line = True
        lines = raw.decode("utf-8").splitlines()
        if not lines:
            self._write_lines([{"_header": self.header}])
            return
        first = json.loads(lines[0])
        old = first.get("_header") if isinstance(first, dict) else None
        if old is None:
            raise StoreMismatch(f"{self.path}: not a predictions file (no header line)")
        if old != self.header:
            diff = sorted(k for k in set(old) | set(self.header) if old.get(k) != self.header.get(k))
            details = "; ".join(f"{k}: {old.get(k)!r} -> {self.header.get(k)!r}" for k in diff)
            raise StoreMismatch(
                f"{self.path} holds predictions made with other settings ({details}). Evaluate into a new "
                f"folder (hydra.run.dir=...) or start over with eval.restart=true."
            )
        for line in lines[1:]:
            if line.strip():
                rec = json.loads(line)
                self.records[rec["key"]] = rec  # a later record (a retried failure) supersedes

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
        """Write finished records to disk (flushed and synced) before anything else happens."""
        if not records:
            return
        self._write_lines(records)
        for rec in records:
            self.records[rec["key"]] = rec
