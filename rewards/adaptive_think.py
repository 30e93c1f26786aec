"""Adaptive-think reward: pay for the right answer, and for not thinking when thinking is common.

Base values by (mode, correct): think+correct 1, think+wrong 0, no-think+correct 2,
no-think+wrong -1. With mode balance, λ is the share of think completions in the batch and
p = step / total steps; γ_think = exp(-λ(1-p)) and γ_no = exp(-(1-λ)(1-p)) shrink the pay of the
mode that dominates, early in training most:

* think+correct    = γ_think · think_correct
* think+wrong      = think_wrong − (1 − γ_think)
* no-think+correct = γ_no · no_think_correct
* no-think+wrong   = γ_no · no_think_wrong − (1 − γ_no) · no_think_correct

At p = 1 every γ is 1 and the base values come back.

Only a well-formed direct answer (``<answer>…</answer>`` alone) is paid at the no-think rates; every other
completion, malformed ones included, is paid at the think rates. A reply out of format must never out-earn
the well-formed reply it stands for: on the toy, GRPO with the no-think rates for malformed replies learnt
to drop ``</think>`` ("<think>first high, … <answer>low</answer>"), which made its thought-out answers count
as direct ones and collect the no-think bonus (bench/RESULTS.md). Paid as thoughts, such replies earn what a
well-formed thought earns minus the format reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from audiothink.formats import parse
from .accuracy import _check_lengths, is_correct

Base = tuple[float, float, float, float]
DEFAULT_BASE: Base = (1.0, 0.0, 2.0, -1.0)


def adaptive_value(
    thinks: bool, correct: bool, lam: float, progress: float, *, base: Base = DEFAULT_BASE
) -> float:
    """The reward of one completion; ``base`` = (think_correct, think_wrong, no_think_correct, no_think_wrong).

    >>> round(adaptive_value(True, True, lam=1.0, progress=0.0), 4)  # all-think batch, step 0
    0.3679
    >>> round(adaptive_value(True, False, lam=1.0, progress=0.0), 4)
    -0.6321
    >>> adaptive_value(False, False, lam=0.3, progress=1.0)
    -1.0
    """
    think_correct, think_wrong, no_think_correct, no_think_wrong = base
    lam = _clamp(lam)
    remaining = 1.0 - _clamp(progress)
    if thinks:
        gamma = math.exp(-lam * remaining)
        return gamma * think_correct if correct else think_wrong - (1.0 - gamma)
    gamma = math.exp(-(1.0 - lam) * remaining)
    if correct:
        return gamma * no_think_correct
    # Beyond losing the no-think bonus, a wrong skip is charged what a right skip would have paid.
    return gamma * no_think_wrong - (1.0 - gamma) * no_think_correct


class AdaptiveThink:
    """Reward for answering correctly, and for thinking only when the batch does not already.

    Batch-wide: the trainer calls it once with the gathered batch of all ranks, so λ (the share of
    think completions) is global. ``last_think_share`` keeps the λ of the last call for logging.

    >>> from audiothink.rewards import AdaptiveThink
    >>> reward = AdaptiveThink()
    >>> completions = ["<think>bowed</think><answer>cello</answer>", "<answer>violin</answer>"]
    >>> [round(r, 4) for r in reward(completions, ["cello"] * 2, [["violin", "cello"]] * 2)]
    [0.6065, -1.3935]
    >>> reward.last_think_share
    0.5
    >>> AdaptiveThink(balance=False)(completions, ["cello"] * 2, [["violin", "cello"]] * 2)
    [1.0, -1.0]
    """

    __name__ = "adaptive_think"
    batch_wide = True

    def __init__(
        self,
        balance: bool = True,
        think_correct: float = 1.0,
        think_wrong: float = 0.0,
        no_think_correct: float = 2.0,
        no_think_wrong: float = -1.0,
        letters: bool = False,
    ) -> None:
        self.balance = balance
        self.letters = bool(letters)  # correctness as audiothink.rewards.Accuracy judges it: the benchmarks' rule, or letters
        self.base: Base = (think_correct, think_wrong, no_think_correct, no_think_wrong)
        self.last_think_share: float | None = None

    def __call__(
        self,
        completions: list[Any],
        answer: Sequence[str],
        choices: Sequence[Sequence[str]],
        trainer_state: Any = None,
        **kwargs: Any,
    ) -> list[float | None]:
        _check_lengths(completions, answer, choices)
        parsed = [parse(c) for c in completions]
        # Malformed completions count too: they are part of the batch whose mode mix we steer.
        lam = sum(p.thinks for p in parsed) / len(parsed) if parsed else 0.0
        self.last_think_share = lam
        # Without balance every γ is 1, which is the formula at p = 1.
        progress = _progress(trainer_state) if self.balance else 1.0

        scores: list[float | None] = []
        for c, p, gold, options in zip(completions, parsed, answer, choices):
            correct = is_correct(c, gold, options, letters=self.letters)
            # the no-think rates are for well-formed direct answers only (module docstring)
            thought = p.thinks or not p.well_formed
            scores.append(
                None if correct is None else adaptive_value(thought, correct, lam, progress, base=self.base)
            )
        return scores


# The class body sets __name__ for instances; this sets it on the class itself too.
AdaptiveThink.__name__ = "adaptive_think"


def _progress(trainer_state: Any) -> float:
    """global_step / max_steps from a transformers TrainerState, 0.0 when unknown."""
    try:
        step = float(trainer_state.global_step)
        total = float(trainer_state.max_steps)
    except (AttributeError, TypeError, ValueError):
        return 0.0
    return _clamp(step / total) if total > 0 else 0.0


def _clamp(x: float) -> float:
    # NaN compares false everywhere; treat it as the start of training.
    return min(1.0, max(0.0, x)) if x == x else 0.0
