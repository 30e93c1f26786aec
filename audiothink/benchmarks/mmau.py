"""MMAU (test-mini: 1,000 items with answers; test: 9,000 items, answers withheld).

Official metadata: one JSON list; every item has ``id``, ``audio_id`` (``./test-mini-audios/<id>.wav``,
joined onto the data root), ``question``, ``choices`` (2–8 strings), ``answer`` (one of them; absent or
empty in the test split), ``dataset``, ``task`` (sound | music | speech), ``split``, ``category`` (a string,
in a few items a one-element list), ``sub-category`` and ``difficulty`` (easy | medium | hard). Unknown
fields are kept in the submission file and otherwise ignored.

Breakdowns: task, difficulty, sub-category and the total. Submission: the items plus the prediction
under ``model_output`` (what the current official script reads) and ``model_prediction`` (what its
README and older scripts read).

Quirks of the releases that the official scorer tolerates are accepted and counted (``base.QUIRKS``):
``category`` as a one-element list, answers that are not among the choices (147 in one release),
repeated and same-word choices.

Two releases exist (the original and ``v05.15.25``, with about a quarter of the questions revised);
their numbers are not comparable, so every report names the version.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audiothink.benchmarks.base import Benchmark, MetaProblems, find_quirks, join_audio, read_metadata
from audiothink.data import Sample

__all__ = ["load_mmau", "build_mmau", "TASKS", "DIFFICULTIES", "DIMENSIONS", "SUBMISSION_FIELDS"]

TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "medium", "hard")
DIMENSIONS = ("task", "difficulty", "sub-category")
SUBMISSION_FIELDS = {"model_output": "prediction", "model_prediction": "prediction"}
# breakdown labels: a one-element list is read as its string (a counted quirk)
_LABELS = ("task", "difficulty", "category", "sub-category")
_KNOWN = ("id", "audio_id", "question", "choices", "answer", "dataset", "task", "split", "category",
          "sub-category", "difficulty")


def guess_version(path: Path) -> str:
    """``v05.15.25``-style release tag in the file name, or a request to name it."""
    m = re.search(r"v\d{2}\.\d{2}\.\d{2}", path.name)
    return m.group(0) if m else "unspecified (set benchmark.version)"


def load_mmau(
    meta: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    name: str = "mmau",
    version: str | None = None,
) -> Benchmark:
    """Read official MMAU metadata; every problem row is listed in one DataError."""
    meta = Path(meta)
    root = Path(os.path.abspath(data_root if data_root is not None else meta.parent))
    rows, container = read_metadata(meta)
    return build_mmau(rows, meta, root, container=container, name=name, version=version or guess_version(meta))


def build_mmau(rows: list[tuple[int | str, object]], meta: Path, root: Path | None, *, container: str = "json",
               name: str = "mmau", version: str, audio: list[str] | None = None,
               problems: MetaProblems | None = None) -> Benchmark:
    """A :class:`Benchmark` of official-shaped MMAU items ``[(location, item), ...]`` (from the metadata file or
    mapped from a hub copy, :mod:`audiothink.benchmarks.hub`).

    ``audio``: each row's clip path, when the clips are not named by ``audio_id`` (a hub copy's embedded audio,
    written to files); ``audio_id`` is then optional. ``problems`` may already hold the rows' mapping problems.
    """
    problems = problems or MetaProblems(meta)
    samples, items, groups, quirks = [], [], [], []
    for n, (loc, item) in enumerate(rows):
        if not isinstance(item, dict):
            problems.add(loc, item, "item", f"expected a JSON object, got {type(item).__name__}")
            continue
        rid = problems.text(loc, item, "id")
        clip = audio[n] if audio is not None else problems.text(loc, item, "audio_id")
        question = problems.text(loc, item, "question")
        choices = problems.choices(loc, item)
        answer = problems.text(loc, item, "answer", required=False) or ""
        task = problems.label(loc, item, "task")
        difficulty = problems.label(loc, item, "difficulty")
        category = problems.label(loc, item, "category")
        sub = problems.label(loc, item, "sub-category")
        if None in (rid, clip, question, choices):
            continue
        samples.append(
            Sample(
                id=rid, audio=(clip if audio is not None else join_audio(root, clip),), question=question.strip(),
                # an empty choice (a tolerated quirk) has nothing to show: it is left out of the prompt
                choices=tuple(c.strip() for c in choices if c.strip()), answer=answer.strip(),
                task=task or None,
                category=category or None, difficulty=difficulty or None, source=item.get("dataset") or None,
                extra={"sub-category": sub},
            )
        )
        items.append(item)
        quirks.append(find_quirks(item, choices, answer, _LABELS))
        groups.append({"task": task or "unknown", "difficulty": difficulty or "unknown",
                       "sub-category": sub or "unknown"})
    problems.raise_if_any()
    return Benchmark(
        name=name, kind="mmau", version=version, meta_path=meta, samples=samples,
        items=items, groups=groups, dimensions=DIMENSIONS, container=container,
        submission_fields=dict(SUBMISSION_FIELDS), quirks=quirks,
    )
