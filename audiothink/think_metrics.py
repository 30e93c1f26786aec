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
* How the model thinks, on the rows where the toy logic judge applies (toy questions,
  :mod:`audiothink.judge.toy_logic`; :func:`chain_metrics`, also what ``bench/toy_ablation.py`` can report), over
  the thought-out completions, overall and per difficulty (``.../<difficulty>``): ``think/inconsistent_share``,
  the share whose thought concludes another option than the answer (the rule judge's consistency is 0, the
  consistency reward's notion); ``think/invalid_chain_share``, the share whose chain is not valid by the toy's
  rule (invalid, or not in the chain language at all); ``think/invalid_correct_share``, of the correct
  thought-out answers, the share reached through a chain that is not valid (the hack the think-quality reward is
  for).
"""

from __future__ import annotations

import numpy as np

from audiothink.formats import parse
from audiothink.judge.rule import consistency
from audiothink.judge.toy_logic import chain_validity
from audiothink.scoring import is_correct

__all__ = ["think_metrics", "chain_metrics"]


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
    metrics.update(chain_metrics(completions, columns))
    return metrics


def chain_metrics(completions: list, columns: dict[str, list] | None) -> dict[str, float]:
    """How the thought-out completions think, on the rows a toy rule applies to (the module doc's three shares).

    `completions`: text or conversational completions (a forced mode's prefill included: what the rewards read),
    one per row; `columns`: ``question`` (which toy task, hence which rule: rows of other questions are left out),
    ``choices``, ``answer`` (the gold option), ``difficulty`` (optional: the per-difficulty keys), each a list with
    one value per completion. Returns shares in [0, 1]; a share without rows to measure it on is left out (no
    thought-out toy completion: ``{}``). Deterministic: the rule judge's consistency and the toy logic judge's
    chain check, no model.

    >>> q, ch = "how many beeps are there?", ["one", "two", "three"]
    >>> done = ["<think>first two, so two</think><answer>two</answer>",  # valid, consistent, correct
    ...         "<think>first one, so two</think><answer>two</answer>",  # invalid, consistent, correct
    ...         "<think>first one, so one</think><answer>two</answer>",  # valid, inconsistent, correct
    ...         "<answer>two</answer>"]  # not thought out: not counted
    >>> chain_metrics(done, {"question": [q] * 4, "choices": [ch] * 4, "answer": ["two"] * 4})
    {'think/inconsistent_share': 0.3333333333333333, 'think/invalid_chain_share': 0.3333333333333333, 'think/invalid_correct_share': 0.3333333333333333}
    """
    columns = columns or {}
    questions = columns.get("question")
    if not questions:
        return {}
    n = len(completions)
    choices = columns.get("choices") or [[] for _ in range(n)]
    answers = columns.get("answer") or [None] * n
    difficulty = columns.get("difficulty") or [""] * n
    rows = []  # (difficulty, inconsistent, invalid, correct or None) per thought-out toy completion
    for c, q, ch, gold, d in zip(completions, questions, choices, answers, difficulty, strict=True):
        p = parse(c)
        if not p.thinks:
            continue
        chain = chain_validity(p.think, q)
        if chain is None:  # not a toy question: no rule to check the chain against
            continue
        correct = is_correct(c, gold, ch) if gold is not None and ch else None
        rows.append((str(d or ""), consistency(p.think, p.answer, list(ch)) == 0.0, not chain.valid, correct))
    metrics: dict[str, float] = {}
    groups = [("", rows)] + [(f"/{d}", [r for r in rows if r[0] == d]) for d in sorted({r[0] for r in rows} - {""})]
    for suffix, sel in groups:
        if sel:
            metrics[f"think/inconsistent_share{suffix}"] = sum(r[1] for r in sel) / len(sel)
            metrics[f"think/invalid_chain_share{suffix}"] = sum(r[2] for r in sel) / len(sel)
        correct = [r for r in sel if r[3]]
        if correct:
            metrics[f"think/invalid_correct_share{suffix}"] = sum(r[2] for r in correct) / len(correct)
    return metrics
