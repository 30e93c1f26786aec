"""What a training step's completions say about when the model thinks: the think/* family of metrics.

Computed on the gathered batch of every step (`AudioGRPOTrainer._calculate_rewards`), whatever rewards are
configured, and logged next to TRL's own metrics (metrics.jsonl, TensorBoard, the progress line):

* ``think/rate``: the share of completions with a well-formed think block; ``think/rate/<difficulty>`` per
  difficulty of the rows (the toy's easy / hard, MMAU's easy / medium / hard): when to think is the point.
* ``accuracy/rate`` (and per difficulty): correct by the benchmarks' rule (:func:`audiothink.scoring.is_correct`,
  :class:`audiothink.rewards.Accuracy`'s default), when the rows have ``answer`` and ``choices``.
* ``format/malformed_rate``: the share in neither answer format (:mod:`audiothink.formats`).
* ``completions/answered``: the share with an answer block (a cut completion may still have answered:
  :mod:`audiothink.plumbing.health` reads it).
* ``think/mean_tokens``: the mean length of the think blocks, in tokens (only when some completion thinks).
"""

from __future__ import annotations

import numpy as np

from audiothink.formats import parse
from audiothink.scoring import is_correct

__all__ = ["think_metrics"]


def think_metrics(completions: list, columns: dict[str, list] | None, tokenizer) -> dict[str, float]:
    """The step's think/* metrics, in the order they are logged.

    `completions`: the gathered batch's completions (text, or TRL's conversational messages), one per row;
    `columns`: the gathered dataset columns (``answer``, ``choices``, ``difficulty`` are read when present),
    each a list with one value per completion; `tokenizer`: counts the think blocks' tokens. Rates are in
    [0, 1]; a metric without rows to measure it on is left out.
    """
    metrics: dict[str, float] = {}
    parsed = [parse(c) for c in completions]
    thinks = [p for p in parsed if p.thinks]
    metrics["think/rate"] = len(thinks) / max(len(parsed), 1)
    columns = columns or {}
    correct = None
    if "answer" in columns and "choices" in columns:
        # correct by the benchmarks' rule (audiothink.rewards.Accuracy's default), whatever the configured rewards
        correct = [is_correct(c, a, ch) for c, a, ch in zip(completions, columns["answer"], columns["choices"])]
        scored = [bool(x) for x in correct if x is not None]
        if scored:
            metrics["accuracy/rate"] = sum(scored) / len(scored)
    # per difficulty (the toy's easy / hard, MMAU's easy / medium / hard): when to think is the point
    by: dict[str, list[int]] = {}
    for i, d in enumerate(columns.get("difficulty") or []):
        if d:
            by.setdefault(str(d), []).append(i)
    for d, idx in sorted(by.items()):
        metrics[f"think/rate/{d}"] = sum(parsed[i].thinks for i in idx) / len(idx)
        if correct is not None:
            flags = [bool(correct[i]) for i in idx if correct[i] is not None]
            if flags:
                metrics[f"accuracy/rate/{d}"] = sum(flags) / len(flags)
    metrics["format/malformed_rate"] = sum(not p.well_formed for p in parsed) / max(len(parsed), 1)
    # the share with an answer block (audiothink.plumbing.health: a cut completion may still have answered)
    metrics["completions/answered"] = sum(p.answer is not None for p in parsed) / max(len(parsed), 1)
    if thinks:
        lengths = [len(tokenizer(p.think or "", add_special_tokens=False)["input_ids"]) for p in thinks]
        metrics["think/mean_tokens"] = float(np.mean(lengths))
    return metrics
