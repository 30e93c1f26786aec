"""A judge that cannot answer is found before training, and a judge that stops answering is named during it.

Without this, a wrong ``judge.base_url`` costs a whole run: every judge call fails, every judged sample
scores None, and the run ends with exit 0 and an empty judge reward at every step.

* :func:`probe_judges`, at start-up (before the data and the policy model load): one short request per
  judge task the configured rewards use (``consistency``, ``think_quality``, a plugin's prompt), no
  retries, the reply must parse. A failure stops the run with one line naming the judge (URL or path) and
  the error, exit 2 -- or, with ``judge.on_probe_failure=warn``, is logged and training goes on. The rule
  judge has nothing to reach and is not probed; the hf judge (loaded already) answers one ``generate``.
* :class:`JudgeWatch`, during training: when more than ``judge.max_failure_share`` of the samples judged
  over the last ``judge.failure_window`` steps got no score, one warning with the counts (per process:
  each rank judges its own completions; ``judge/failures`` has the per-step counts).

A reward's judge and task are found as its attributes ``judge`` (a :class:`Judge`) and ``prompt`` (or
``PROMPT``: a prompt name or a :class:`Prompt`); a reward with a judge and neither is probed on every
prompt of ``judge.prompts``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

from transformers import TrainerCallback

from audiothink.plumbing.errors import ConfigError
from audiothink.judge.base import Judge, Prompt

log = logging.getLogger("audiothink.judge")


def judged_tasks(rewards: Iterable) -> list[tuple[str, Judge, str | Prompt]]:
    """``(reward name, judge, task)`` for every distinct question the rewards will ask a judge."""
    found, seen = [], set()
    for fn in rewards:
        judge = getattr(fn, "judge", None)
        if not isinstance(judge, Judge):
            continue
        tasks = [t for t in (getattr(fn, "prompt", None), getattr(fn, "PROMPT", None)) if isinstance(t, (str, Prompt))]
        for task in tasks or list(judge.prompts):
            key = (repr(judge), task if isinstance(task, str) else (task.name, task.template))
            if key not in seen:
                seen.add(key)
                found.append((getattr(fn, "__name__", type(fn).__name__), judge, task))
    return found


# judge groups with a model to reach (configs/judge/hf.yaml, openai.yaml); rule and toy_logic have none
MODEL_JUDGES = {"audiothink.judge.HFJudge": "hf", "audiothink.judge.OpenAIJudge": "openai"}


def check_judge_used(judge_cfg, rewards: Iterable) -> None:
    """A judge model chosen (``judge=hf`` / ``judge=openai``) that none of the rewards asks is a mistake: the user
    believes a judge scores the run, and nothing would (not even its start-up probe). ConfigError naming the
    rewards, unless a reward asks a judge (:func:`judged_tasks`)."""
    target = judge_cfg.get("_target_") if judge_cfg is not None else None
    if target not in MODEL_JUDGES:
        return
    rewards = list(rewards)
    if judged_tasks(rewards):
        return
    where = judge_cfg.get("base_url") or judge_cfg.get("path")
    names = ", ".join(getattr(fn, "__name__", type(fn).__name__) for fn in rewards) or "none"
    raise ConfigError(f"judge={MODEL_JUDGES[target]} (judge at {where}): none of the rewards ({names}) asks a judge, so "
                      "it would never be used; pick a reward set with judge rewards (reward=full, "
                      "reward=adaptive_consistency) or leave judge= out")


def probe_judges(rewards: Iterable) -> None:
    """Probe each judge task once (see the module doc); a failure is a :class:`ConfigError` unless the
    judge's ``on_probe_failure`` is ``warn``."""
    for name, judge, task in judged_tasks(rewards):
        if judge.where is None:
            continue  # nothing to reach (the rule judge)
        task_name = task if isinstance(task, str) else task.name
        start = time.perf_counter()
        problem = judge.probe(task)
        seconds = time.perf_counter() - start
        if problem is None:
            log.info("judge: %s answers the %r prompt (%.1f s)", judge.where, task_name, seconds)
            continue
        message = f"the judge at {judge.where} failed its start-up probe ({task_name!r} prompt, reward.{name}): {problem}"
        if judge.on_probe_failure == "stop":
            raise ConfigError(f"{message}; start it or fix the judge settings, or set judge.on_probe_failure=warn "
                              "to train on without it")
        log.warning("%s; training on (judge.on_probe_failure=warn): its samples score None while it fails", message)


class FailureWindow:
    """The failure share of the last ``steps`` steps' judge calls; :meth:`add` gives the warning, once.

    >>> w = FailureWindow(max_share=0.5, steps=2)
    >>> w.add(1, failed=8, total=8) is None  # the window is not full yet
    True
    >>> w.add(2, failed=1, total=8)  # 9 of 16 failed
    'judge: 9 of 16 judged samples (56%) got no score over steps 1-2, more than judge.max_failure_share=0.5'
    >>> w.add(3, failed=8, total=8) is None  # said once
    True
    """

    def __init__(self, max_share: float, steps: int):
        self.max_share = max_share
        self.steps = steps
        self.window: deque[tuple[int, int, int]] = deque(maxlen=steps)
        self.warned = False

    def add(self, step: int, failed: int, total: int) -> str | None:
        self.window.append((step, failed, total))
        if self.warned or len(self.window) < self.steps:
            return None
        failed_sum = sum(f for _, f, _ in self.window)
        total_sum = sum(t for _, _, t in self.window)
        if total_sum == 0 or failed_sum <= self.max_share * total_sum:
            return None
        self.warned = True
        return (f"judge: {failed_sum} of {total_sum} judged samples ({failed_sum / total_sum:.0%}) got no score "
                f"over steps {self.window[0][0]}-{self.window[-1][0]}, more than judge.max_failure_share="
                f"{self.max_share:g}")


class JudgeWatch(TrainerCallback):
    """Warns once when the rewards' judges fail for more than their ``max_failure_share`` of a window."""

    def __init__(self, rewards: Iterable):
        self.judges = list({id(j): j for _, j, _ in judged_tasks(rewards) if j.where is not None}.values())
        first = self.judges[0] if self.judges else None
        self.window = FailureWindow(first.max_failure_share, first.failure_window) if first else None
        self._seen = self._counts()

    def _counts(self) -> tuple[int, int]:
        return sum(j.failures for j in self.judges), sum(j.samples for j in self.judges)

    def on_step_end(self, args, state, control, **kwargs):
        if self.window is None:
            return
        failures, samples = self._counts()
        failed, total = failures - self._seen[0], samples - self._seen[1]
        self._seen = (failures, samples)
        message = self.window.add(state.global_step, failed, total)
        if message:
            where = ", ".join(sorted({j.where for j in self.judges}))
            log.warning("%s: the judge-based rewards are mostly None (is the judge at %s still up? see the "
                        "judge's warnings above and judge/failures)", message, where)
