"""Dead runs say they are dead: a GRPO step without a learning signal, named while the run goes on.

GRPO learns from reward differences within a prompt's group of G completions. A run can go on for
thousands of steps with loss 0 and gradient 0, exit 0, and look finished:

* ``no_reward``: no completion got any optimised (weight != 0) reward: every one was None, e.g. a formula
  that divides by zero, or a judge that is down; TRL then pays every completion 0.
* ``zero_variance``: in at least 95 % of the groups every completion got the same reward (TRL's
  ``frac_reward_zero_std``): the advantages, and so the gradient, are zero. Either the reward cannot tell
  the completions apart, or the policy has converged on the training prompts.
* ``truncated``: at least 95 % of the completions were cut at ``max_completion_length``
  (``completions/clipped_ratio``) and at most 5 % have an answer block (``completions/answered``): the rewards
  cannot tell them apart. A completion that answered and then ran on to the limit without an end token also
  counts as cut (TRL's ratio counts completions that do not end in EOS), so the ratio alone says nothing:
  steps at 81-100 % accuracy showed 100 % cut.

Each logging step gets ``health/<cause>`` (1 when the cause holds, else 0) and ``health/ok``. A cause that
holds for ``patience`` logging steps in a row is logged once as a warning (again if it clears and comes back),
and named in the console's progress line. Where the cause can be known before the run (every reward weight
0), ``audiothink.plumbing.validate`` stops the run at start-up instead.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

log = logging.getLogger("audiothink.plumbing.health")

__all__ = ["CAUSES", "THRESHOLD", "causes", "HealthMonitor"]

# Share above which a group statistic counts as "all of them".
THRESHOLD = 0.95

CAUSES = {
    "no_reward": "no completion got an optimised reward (every weighted reward was None: a formula dividing by "
                 "zero, a judge that is down?); every reward is 0",
    "zero_variance": "the rewards were equal within >= 95% of the groups (frac_reward_zero_std): the advantages "
                     "and the gradient are 0 (converged, or the reward cannot tell completions apart)",
    "truncated": ">= 95% of the completions were cut at max_completion_length (completions/clipped_ratio) and <= 5% "
                 "have an answer block (completions/answered); raise trainer.max_completion_length",
}


def causes(logs: dict) -> dict[str, bool]:
    """Which causes hold for one logging step's averaged metrics (missing metrics hold nothing)."""

    def at_least(key: str, value: float) -> bool:
        v = logs.get(key)
        return isinstance(v, (int, float)) and v >= value

    def at_most(key: str, value: float) -> bool:
        v = logs.get(key)
        return isinstance(v, (int, float)) and v <= value

    scored = logs.get("health/scored")
    return {
        "no_reward": isinstance(scored, (int, float)) and scored <= 0.0,
        "zero_variance": at_least("frac_reward_zero_std", THRESHOLD),
        # round(): 1 - 0.95 is 0.050000000000000044 in floats
        "truncated": at_least("completions/clipped_ratio", THRESHOLD)
        and at_most("completions/answered", round(1 - THRESHOLD, 12)),
    }


class HealthMonitor(TrainerCallback):
    """Adds ``health/*`` to every training log (before the loggers see it) and warns about lasting causes.

    ``active`` holds the causes that have lasted ``patience`` logging steps (the progress line shows them).
    """

    def __init__(self, patience: int = 3):
        self.patience = patience
        self.streak = dict.fromkeys(CAUSES, 0)
        self.active: list[str] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs and "reward" not in logs:
            return  # not a training step's log (the end-of-training summary, an evaluation)
        found = causes(logs)
        for cause, holds in found.items():
            logs[f"health/{cause}"] = float(holds)
            self.streak[cause] = self.streak[cause] + 1 if holds else 0
            if self.streak[cause] == self.patience:
                log.warning("step %d: no learning signal for %d logging steps: %s", state.global_step,
                            self.patience, CAUSES[cause])
        logs["health/ok"] = float(not any(found.values()))
        self.active = [c for c in CAUSES if self.streak[c] >= self.patience]
