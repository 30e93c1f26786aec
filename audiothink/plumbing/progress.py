"""The progress line of a training run: one compact line per logging step (see :mod:`audiothink.plumbing.console`).

Apart from the console's logging setup because it is a transformers ``TrainerCallback``, whose import (TrainingArguments,
PEFT: seconds) the logging setup does not need: hydra imports the console module for its formatter before any
config check runs.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from audiothink.plumbing.console import format_duration

__all__ = ["ProgressLine", "use_run_console"]

log = logging.getLogger("audiothink.progress")


def _num(x) -> str:
    return "–" if not isinstance(x, (int, float)) or x != x else f"{x:.3g}"


def _pct(x) -> str:
    return "–" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}%"


class ProgressLine(TrainerCallback):
    """One line per logging step (and a start and an end line), through the ``audiothink.progress`` logger.

    ``health``: an :class:`audiothink.plumbing.health.HealthMonitor`; its lasting causes are appended to the line.
    """

    def __init__(self, health=None):
        self.health = health
        self.started: float | None = None
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.start_step = time.time(), state.global_step
        if state.is_world_process_zero:
            where = f" (resumed at step {state.global_step})" if state.global_step else ""
            log.info("training: %d steps of %d completions (G = %d) per device%s", state.max_steps,
                     args.per_device_train_batch_size * args.gradient_accumulation_steps, args.num_generations,
                     where)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        log.info(self.line(state.global_step, state.max_steps, logs))

    def line(self, step: int, total: int, logs: dict) -> str:
        parts = [f"step {step}/{total}", f"reward {_num(logs.get('reward'))}"]
        means = [(k[len("rewards/"):-len("/mean")], v) for k, v in logs.items()
                 if k.startswith("rewards/") and k.endswith("/mean")]
        if means:
            parts.append(" ".join(f"{name} {_num(v)}" for name, v in means))
        think = f"think {_pct(logs.get('think/rate'))}"
        if "think/inconsistent_share" in logs:  # how it thinks, on toy rows (audiothink/think_metrics.py: chain_metrics)
            think += (f" (inconsistent {_pct(logs['think/inconsistent_share'])}, "
                      f"invalid {_pct(logs.get('think/invalid_chain_share'))})")
        parts.append(think)
        if "accuracy/rate" in logs:
            parts.append(f"accuracy {_pct(logs['accuracy/rate'])}")
        if "kl" in logs:
            parts.append(f"kl {_num(logs['kl'])}")
        parts += [f"entropy {_num(logs.get('entropy'))}", f"clipped {_pct(logs.get('completions/clipped_ratio'))}"]
        if "rollout/logprob_corr" in logs:  # rollout.engine=vllm: vLLM's log-probs vs the trainer's (vllm_rollout)
            corr = logs["rollout/logprob_corr"]  # NaN (None once logged) when a side had no variance
            corr = f"{corr:.4f}" if isinstance(corr, (int, float)) and corr == corr else "–"
            parts.append(f"vllm corr {corr} |dlogp| {_num(logs.get('rollout/logprob_abs_diff'))}")
        if self.started is not None and step > self.start_step:
            per_step = (time.time() - self.started) / (step - self.start_step)
            parts += [f"{per_step:.3g} s/step", f"ETA {format_duration(per_step * max(total - step, 0))}"]
        if self.health is not None and self.health.active:
            parts.append("NO LEARNING SIGNAL: " + ", ".join(self.health.active))
        return " | ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.started is not None:
            log.info("training: %d steps in %s", state.global_step - self.start_step,
                     format_duration(time.time() - self.started))


def use_run_console(trainer):
    """audiothink's console on `trainer` (a transformers Trainer); returns its health monitor.

    Adds an :class:`audiothink.plumbing.health.HealthMonitor` (``health/*`` metrics, warnings for steps without a
    learning signal) before the loggers, so that TensorBoard and metrics.jsonl get its keys, and replaces the
    Trainer's progress bar and printed metrics dict (``ProgressCallback`` / ``PrinterCallback``) with one
    :class:`ProgressLine` per logging step. Call it once, right after building the trainer.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from audiothink.plumbing.health import HealthMonitor

    health = HealthMonitor()
    trainer.callback_handler.callbacks.insert(1, health)  # after DefaultFlowCallback, before the loggers
    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(ProgressLine(health))
    return health
