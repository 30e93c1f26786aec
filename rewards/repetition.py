"""Repetition reward: a penalty for repeated word n-grams (loops, stutter, copy-paste reasoning).

    value = -(1 - distinct n-grams / all n-grams)      in [-1, 0]

over the lower-cased words of the whole completion (``scope="completion"``) or of the think block only
(``scope="think"``). Text with fewer than ``n`` words gets 0. Off by default; switch it on with a weight,
e.g. ``+reward.repetition.weight=0.5 +reward.repetition.fn._target_=audiothink.rewards.Repetition``.
"""

from __future__ import annotations

from typing import Any

from audiothink.formats import completion_text, parse


class Repetition:
    """Minus the share of repeated word n-grams.

    >>> from audiothink.rewards import Repetition
    >>> Repetition(n=2)(["a b c d", "a b a b a b", "a", "<think>x y x y</think><answer>z</answer>"])
    [0.0, -0.6, 0.0, -0.25]
    >>> Repetition(n=2, scope="think")(["<answer>a b a b</answer>"])
    [0.0]
    """

    __name__ = "repetition"

    def __init__(self, n: int = 3, scope: str = "completion"):
        if n < 1 or scope not in ("completion", "think"):
            raise ValueError(f"repetition: need n >= 1 and scope 'completion' or 'think', got {n}, {scope!r}")
        self.n = int(n)
        self.scope = scope

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float]:
        return [self.value(c) for c in completions]

    def value(self, completion: Any) -> float:
        text = (parse(completion).think or "") if self.scope == "think" else completion_text(completion)
        for tag in ("<think>", "</think>", "<answer>", "</answer>"):
            text = text.replace(tag, " ")
        words = text.lower().split()
        grams = [tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1)]
        if not grams:
            return 0.0
        return -(1.0 - len(set(grams)) / len(grams)) or 0.0


# The class body sets __name__ for instances; this sets it on the class itself too.
Repetition.__name__ = "repetition"
