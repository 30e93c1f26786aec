"""Benchmarks: official metadata in, leaderboard-comparable scores and submission files out.

* :mod:`~audiothink.scoring` — the official MMAU/MMAR rule (``string_match``, ``tokenize``).
* :mod:`~audiothink.benchmarks.mmau`, :mod:`~audiothink.benchmarks.mmar`,
  :mod:`~audiothink.benchmarks.unified` — loaders returning a :class:`Benchmark`.
* :mod:`~audiothink.benchmarks.store` — the resumable predictions file.
* :mod:`~audiothink.benchmarks.runner` — batched answering, the listening check's audio, the KL monitor.
* :mod:`~audiothink.benchmarks.report` — breakdowns, think statistics, results, report.md, charts.

The entry point is ``python -m audiothink.evaluate`` (audiothink/evaluate.py).
"""

from __future__ import annotations

import os

from audiothink.benchmarks.base import Benchmark, write_submission
from audiothink.benchmarks.mmar import load_mmar
from audiothink.benchmarks.mmau import load_mmau
from audiothink.scoring import format_line, string_match, tokenize
from audiothink.benchmarks.unified import load_unified

__all__ = ["Benchmark", "LOADERS", "load_benchmark", "load_mmau", "load_mmar", "load_unified", "string_match",
           "tokenize", "format_line", "write_submission"]

LOADERS = {"mmau": load_mmau, "mmar": load_mmar, "unified": load_unified}


def load_benchmark(fmt: str, meta: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                   name: str | None = None, version: str | None = None) -> Benchmark:
    """Load ``meta`` with the loader for ``fmt`` (mmau | mmar | unified)."""
    if fmt not in LOADERS:
        from audiothink.plumbing.errors import ConfigError

        raise ConfigError(f"benchmark.format must be one of {sorted(LOADERS)}, got {fmt!r}")
    return LOADERS[fmt](meta, data_root, name=name or fmt, version=version)
