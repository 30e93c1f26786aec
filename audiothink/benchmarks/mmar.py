"""MMAR (1,000 items; speech, sound, music and their mixes; four reasoning layers).

Official metadata: ``MMAR-meta.jsonl`` (one object a line) or, in older copies, ``MMAR-meta.json`` (a JSON
list). Fields: ``id``, ``audio_path`` (``./audio/<id>.wav``, joined onto the data root), ``question``,
``choices``, ``answer``, ``modality`` (7 values, below), ``category`` (the layer, below), ``sub-category``,
``language`` (may be null), ``source``, ``url``, ``timestamp``; newer copies add ``thinking``, ``cue``,
``rubric``. Unknown fields are kept in the submission file and otherwise ignored.

Breakdowns: modality, category, sub-category and the total. Submission: the items plus
``answer_prediction`` (current script), ``model_prediction`` (older) and ``thinking_prediction`` on every
item (the think text; ``""`` for a direct answer: the official rubric script skips items without it).

Quirks of the release that the official scorer tolerates are accepted and counted (``base.QUIRKS``): the
current file has 4 items whose choice list holds an empty string, and a few choices and answers with
trailing spaces.
"""

from __future__ import annotations

import os
from pathlib import Path

from audiothink.benchmarks.base import Benchmark, MetaProblems, find_quirks, join_audio, read_metadata
from audiothink.data import Sample

__all__ = ["load_mmar", "build_mmar", "MODALITIES", "CATEGORIES", "DIMENSIONS", "SUBMISSION_FIELDS"]

MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech")
CATEGORIES = ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")
DIMENSIONS = ("modality", "category", "sub-category")
SUBMISSION_FIELDS = {"answer_prediction": "prediction", "model_prediction": "prediction",
                     "thinking_prediction": "think"}
# breakdown labels: a one-element list is read as its string (a counted quirk)
_LABELS = ("modality", "category", "sub-category")


def load_mmar(
    meta: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    name: str = "mmar",
    version: str | None = None,
) -> Benchmark:
    """Read official MMAR metadata (.jsonl or .json); every problem row is listed in one DataError."""
    meta = Path(meta)
    root = Path(os.path.abspath(data_root if data_root is not None else meta.parent))
    rows, container = read_metadata(meta)
    return build_mmar(rows, meta, root, container=container, name=name, version=version)


def build_mmar(rows: list[tuple[int | str, object]], meta: Path, root: Path | None, *, container: str = "jsonl",
               name: str = "mmar", version: str | None = None, audio: list[str] | None = None,
               problems: MetaProblems | None = None) -> Benchmark:
    """A :class:`Benchmark` of official-shaped MMAR items ``[(location, item), ...]`` (from the metadata file or
    mapped from a hub copy, :mod:`audiothink.benchmarks.hub`).

    ``audio``: each row's clip path, when the clips are not named by ``audio_path`` (a hub copy's embedded
    audio, written to files); ``audio_path`` is then optional. ``problems`` may already hold mapping problems.
    """
    problems = problems or MetaProblems(meta)
    samples, items, groups, quirks = [], [], [], []
    for n, (loc, item) in enumerate(rows):
        if not isinstance(item, dict):
            problems.add(loc, item, "item", f"expected a JSON object, got {type(item).__name__}")
            continue
        rid = problems.text(loc, item, "id")
        clip = audio[n] if audio is not None else problems.text(loc, item, "audio_path")
        question = problems.text(loc, item, "question")
        choices = problems.choices(loc, item)
        answer = problems.text(loc, item, "answer", required=False) or ""
        modality = problems.label(loc, item, "modality")
        category = problems.label(loc, item, "category")
        sub = problems.label(loc, item, "sub-category")
        if None in (rid, clip, question, choices):
            continue
        samples.append(
            Sample(
                id=rid, audio=(clip if audio is not None else join_audio(root, clip),), question=question.strip(),
                # an empty choice (a tolerated quirk) has nothing to show: it is left out of the prompt
                choices=tuple(c.strip() for c in choices if c.strip()), answer=answer.strip(),
                task=modality or None,
                category=category or None, source=item.get("source") or None,
                extra={"sub-category": sub, "language": item.get("language")},
            )
        )
        items.append(item)
        quirks.append(find_quirks(item, choices, answer, _LABELS))
        groups.append({"modality": modality or "unknown", "category": category or "unknown",
                       "sub-category": sub or "unknown"})
    problems.raise_if_any()
    return Benchmark(
        # the release has 1,000 items; a copy (a subset, a newer file) is named by what it holds
        name=name, kind="mmar", version=version or f"MMAR ({len(items):,} items)", meta_path=meta, samples=samples,
        items=items, groups=groups, dimensions=DIMENSIONS, container=container,
        submission_fields=dict(SUBMISSION_FIELDS), quirks=quirks,
    )
