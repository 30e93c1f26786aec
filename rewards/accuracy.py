"""Accuracy reward: does the answer block pick the gold option?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiothink.choices import match_choice
from audiothink.formats import Parsed, parse


def is_correct(completion: Any, answer: str, choices: Sequence[str]) -> bool | None:
    """Whether the completion's first answer block names the gold option.

    None when ``answer`` is not one of ``choices``: the row cannot be scored, and guessing would
    pay or punish the model for a data error. A missing answer block or an unmatched answer is
    simply wrong. ``completion`` may already be :class:`Parsed`.
    """
    try:
        options = list(choices)
        gold = options.index(answer)
    except (TypeError, ValueError):
        return None
    parsed = completion if isinstance(completion, Parsed) else parse(completion)
    return match_choice(parsed.answer, options) == gold


class Accuracy:
    """Pays 1.0 when the answer block names the gold option, 0.0 otherwise, None if unscoreable.

    ``answer`` and ``choices`` are dataset columns, one entry per completion.

    >>> from rewards import Accuracy
    >>> choices = [["violin", "cello"]] * 3
    >>> Accuracy()(["<answer>(B) cello</answer>", "<answer>A</answer>", "cello"], ["cello"] * 3, choices)
    [1.0, 0.0, 0.0]
    >>> Accuracy()(["<answer>B</answer>"], ["viola"], [["violin", "cello"]])
    [None]
    """

    __name__ = "accuracy"

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
            correct = is_correct(c, gold, options)
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
