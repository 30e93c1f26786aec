"""Format reward: 1.0 for a well-formed think or no-think completion, else 0.0."""

from __future__ import annotations

from typing import Any

from audiothink.formats import parse


class Format:
    """Pays 1.0 when a completion is ``<think>…</think><answer>…</answer>`` or ``<answer>…</answer>``.

    >>> from audiothink.rewards import Format
    >>> Format()(["<think>low, bowed</think><answer>B</answer>", "<answer>B</answer>", "B"])
    [1.0, 1.0, 0.0]
    """

    __name__ = "format"  # TRL logs a reward under its callable's __name__

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float]:
        return [1.0 if parse(c).well_formed else 0.0 for c in completions]


# The class body sets __name__ for instances; this sets it on the class itself too.
Format.__name__ = "format"
