"""Think-length reward: a target band for the length of the reasoning (against overthinking).

Reports on adaptive/efficient reasoning find a sweet spot of a few dozen tokens for short-answer
questions: much shorter reasoning skips steps, much longer reasoning drifts and costs compute. This
reward is 0 inside ``target ± tolerance`` think tokens and falls linearly outside, reaching -1 at
``target`` tokens beyond the band (and staying there):

    value = -min(1, max(0, |n - target| - tolerance) / target)

With ``penalize_short=False`` only reasoning longer than the band is charged. Completions without a
think block get ``no_think`` (default 0: the length of reasoning that is not there is not wrong).

Off by default; switch it on with a weight, e.g.
``+reward.think_length.weight=0.2 +reward.think_length.fn._target_=audiothink.rewards.ThinkLength``.
Tokens are counted with ``tokenizer`` (a checkpoint path or hub id, e.g. ``'${model.path}'`` for the
policy's own), or as whitespace-separated words when it is None.
"""

from __future__ import annotations

import functools
from typing import Any

from audiothink.formats import parse


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class ThinkLength:
    """0 inside the target band of think length, down to -1 outside it.

    >>> from audiothink.rewards import ThinkLength
    >>> reward = ThinkLength(target=4, tolerance=1)
    >>> reward(["<think>one two three four</think><answer>a</answer>",
    ...         "<think>" + "w " * 7 + "</think><answer>a</answer>",
    ...         "<think>one</think><answer>a</answer>", "<answer>a</answer>"])
    [0.0, -0.5, -0.5, 0.0]
    """

    __name__ = "think_length"

    def __init__(
        self,
        target: int = 40,
        tolerance: int = 20,
        penalize_short: bool = True,
        tokenizer: str | None = None,
        no_think: float = 0.0,
    ):
        if target < 1 or tolerance < 0:
            raise ValueError(f"think_length: need target >= 1 and tolerance >= 0, got {target}, {tolerance}")
        self.target = int(target)
        self.tolerance = int(tolerance)
        self.penalize_short = penalize_short
        self.tokenizer = tokenizer
        self.no_think = float(no_think)
        if tokenizer:
            _tokenizer(tokenizer)  # load now: a wrong path fails at start-up

    def count(self, text: str) -> int:
        if self.tokenizer:
            return len(_tokenizer(self.tokenizer)(text, add_special_tokens=False)["input_ids"])
        return len(text.split())

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float]:
        out = []
        for c in completions:
            p = parse(c)
            if not p.thinks:
                out.append(self.no_think)
                continue
            n = self.count(p.think or "")
            distance = n - self.target if n >= self.target else (self.target - n) * self.penalize_short
            out.append(0.0 - min(1.0, max(0, distance - self.tolerance) / self.target))
        return out


# The class body sets __name__ for instances; this sets it on the class itself too.
ThinkLength.__name__ = "think_length"
