"""Any held-out set in the project's unified schema (the toy's eval split, a converted benchmark).

Rows are validated by :func:`audiothink.data.load_samples` (audio is checked later, for every benchmark
alike). Breakdowns: task and difficulty (and category when rows have one). Submission: the rows plus
``model_prediction`` and ``thinking_prediction`` (``""`` for a direct answer).
"""

from __future__ import annotations

import os
from pathlib import Path

from audiothink.benchmarks.base import Benchmark, read_metadata
from audiothink.data import load_samples

__all__ = ["load_unified", "SUBMISSION_FIELDS"]

SUBMISSION_FIELDS = {"model_prediction": "prediction", "thinking_prediction": "think"}


def load_unified(
    meta: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    name: str = "unified",
    version: str | None = None,
) -> Benchmark:
    meta = Path(meta)
    samples = load_samples(meta, audio_root=data_root, on_error="raise", check_audio=False).samples
    rows, container = read_metadata(meta)
    items = [row for _, row in rows]
    dims = ("task", "difficulty") + (("category",) if any(s.category for s in samples) else ())
    groups = [{d: (getattr(s, d) or "unknown") for d in dims} for s in samples]
    return Benchmark(
        name=name, kind="unified", version=version or "unversioned", meta_path=meta, samples=samples,
        items=items, groups=groups, dimensions=dims, container=container,
        submission_fields=dict(SUBMISSION_FIELDS),
    )
