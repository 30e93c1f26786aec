"""Accuracy reward: does the answer name the gold option, by the rule the benchmarks score with?

By default a completion is correct exactly when MMAU and MMAR would count it correct: the official
string-match rule (``audiothink/scoring.py``) on the extracted answer (the first
``<answer>…</answer>`` block, else the raw output; never the think block). So the training signal cannot
drift from the benchmark: a policy that answers with letters (``B``, ``(B)``, ``Answer: B``) earns what the
benchmark would give it, nothing.

``letters=True`` (opt-in) matches the option instead, letters included (``B``, ``(B)``, ``b)``, ``B. violin``,
``Answer: B``, the text in any case; :func:`audiothink.choices.match_choice`): for prompts that ask for a
letter, and then evaluation must be told the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiothink.scoring import is_correct


class Accuracy:
    """Pays 1.0 when the answer is correct (the benchmarks' rule by default), 0.0 otherwise, None if unscoreable.

    ``answer`` and ``choices`` are dataset columns, one entry per completion.

    >>> from audiothink.rewards import Accuracy
    >>> choices = [["violin", "cello"]] * 4
    >>> Accuracy()(["<answer>cello</answer>", "<answer>(B) cello</answer>", "<answer>B</answer>", "cello"],
    ...            ["cello"] * 4, choices)
    [1.0, 1.0, 0.0, 1.0]
    >>> Accuracy(letters=True)(["<answer>B</answer>"], ["cello"], [["violin", "cello"]])
    [1.0]
    >>> Accuracy()(["<answer>B</answer>"], ["viola"], [["violin", "cello"]])
    [None]
    """

    __name__ = "accuracy"

    def __init__(self, letters: bool = False):
        self.letters = bool(letters)

    def __call__(
        self,
        completions: list[Any],
        answer: Sequence[str],
        choices: Sequence[Sequence[str]],
        **kwargs: Any,
    ) -> list[float | None]:
        _check_lengths(completions, answer, choices)
        scores: list[float | None] = []
        for c, gold, options in zip(completions, answer, choices):
            correct = is_correct(c, gold, options, letters=self.letters)
            scores.append(None if correct is None else float(correct))
        return scores


# The class body sets __name__ for instances; this sets it on the class itself too.
Accuracy.__name__ = "accuracy"


def _check_lengths(completions: Sequence[Any], answer: Sequence[Any], choices: Sequence[Any]) -> None:
    # A column that does not line up is a trainer bug, not model output: fail loudly rather than
    # let zip() silently score the wrong rows.
    if not len(completions) == len(answer) == len(choices):
        raise ValueError(
            f"reward columns do not line up: {len(completions)} completions, "
            f"{len(answer)} answers, {len(choices)} choice lists"
        )
