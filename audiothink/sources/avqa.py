"""AVQA as used by R1-AQA and Audio-Thinker: JSON/JSONL metadata plus a folder of audio files.

Two metadata shapes are read (see data_cards/avqa.md):

- R1-AQA's JSON lines (``train_qa.data``; other copies name it ``.jsonl`` or ``.json``): the
  original AVQA fields plus ``dataset_name`` and ``audio_path``::

    {"id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341,
     "question_text": "What happened in the video?",
     "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
     "answer": 1, "question_relation": "View", "question_type": "Happening",
     "dataset_name": "AVQA", "audio_path": "/their/disk/-HG3Omg_89c_30.wav"}

- the original AVQA annotations (``train_qa.json``, a JSON list of the same rows without
  ``dataset_name`` / ``audio_path``): set ``audio_template`` to name the files.

``answer`` is a 0-based index into ``multi_choice``; ids are integers (made strings here). The
recipe rewrites "video" to "audio" in every question (plain, case-sensitive substring replacement,
as R1-AQA's loader does); ``question_rewrite`` switches or changes it. ``question_type`` becomes the
``task`` and ``question_relation`` the ``category`` of the unified sample, for breakdowns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from audiothink.data import LoadResult, RawRow, RowChecks, load_rows, read_metadata_rows
from audiothink.sources.mapping import FieldMap, RowMapping, map_row

__all__ = ["AVQA_FIELDS", "DEFAULT_REWRITE", "load_avqa"]

AVQA_FIELDS = FieldMap(
    id="id",
    audio="audio_path",
    question="question_text",
    choices="multi_choice",
    answer="answer",
    task="question_type",
    category="question_relation",
    difficulty=None,
    source="dataset_name",
)
DEFAULT_REWRITE = {"video": "audio"}


def load_avqa(
    path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    check_audio: bool = True,
    max_seconds: float | None = None,
    checks: RowChecks | None = None,
    question_rewrite: Mapping[str, str] | None = DEFAULT_REWRITE,
    audio_template: str | None = None,
    audio_basename: bool = True,
    fields: FieldMap = AVQA_FIELDS,
    answer_format: str = "auto",
) -> LoadResult:
    """Load and validate AVQA metadata; rows are reported and skipped exactly as in :func:`load_samples`.

    Audio paths (``audio_path``, or ``audio_template`` filled from the row) are reduced to their file
    name when ``audio_basename`` (R1-AQA's files carry their authors' absolute paths) and joined onto
    ``audio_root`` (default: the metadata file's folder). ``counts["questions_rewritten"]`` says how
    many questions the rewrite changed.
    """
    meta = Path(path)
    mapping = RowMapping(
        fields=fields,
        answer_format=answer_format,
        question_rewrite=dict(question_rewrite or {}),
        audio_template=audio_template,
        audio_basename=audio_basename,
        default_source="avqa",
    )
    rewritten = 0

    def mapped() -> Any:
        nonlocal rewritten
        for raw in read_metadata_rows(meta):
            row, problems, changed = map_row(raw.row, mapping)
            rewritten += changed
            if (
                audio_template is None
                and isinstance(raw.row, dict)
                and fields.audio not in raw.row
                and not any(f == fields.audio for f, _ in problems)
            ):
                problems.append((fields.audio, "missing (the original AVQA annotations carry no audio path: "
                                 "set data.audio_template, e.g. '{video_name}.wav' or '{ytid}_{start}.wav')"))
            yield RawRow(raw.where, row, raw.problems + problems)

    root = Path(audio_root) if audio_root is not None else meta.parent
    result = load_rows(
        mapped(), source=str(meta), audio_root=root, on_error=on_error, check_audio=check_audio,
        max_seconds=max_seconds, field_names=fields.display_names(), checks=checks,
    )
    result.counts["questions_rewritten"] = rewritten
    return result
