"""Every config value that can be judged on its own, checked before any data or model is loaded.

A wrong value found here costs a second; found after the data set, the model and the "before" held-out
pass, it costs minutes on a 7B model, and some (a negative learning rate or KL weight, ``max_steps=0``)
would not fail at all but train something else. Each problem is a :class:`ConfigError` whose one-line
message names the key, the value and what it must be; the entry points print it and exit 2.

Checks that need the data (a data set too small for one step) are in :func:`check_dataset_size`, run right
after the data is read and before the model is loaded.
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audiothink.errors import ConfigError
from audiothink.formats import FORCE_PREFILLS

__all__ = ["LOSS_TYPES", "check_train_config", "check_eval_settings", "check_dataset_size", "prompts_per_step"]

# TRL 1.16's GRPOConfig.loss_type values (grpo_trainer.py: anything else fails in the first loss computation).
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


def _number(section: str, cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{section}.{key}={value!r}: expected a number")
    return value


def _positive_int(section: str, cfg: DictConfig, key: str, *, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{section}.{key}={value!r}: must be a whole number >= 1")


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate launch set WORLD_SIZE), 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prompts_per_step(trainer: DictConfig, processes: int | None = None) -> int:
    """Distinct prompts in one generation batch: per-device batch × processes × steps per generation / G."""
    processes = processes or world_size()
    steps_per_generation = trainer.get("steps_per_generation") or trainer.get("gradient_accumulation_steps", 1)
    generation_batch = trainer.get("generation_batch_size") or (
        trainer.per_device_train_batch_size * processes * steps_per_generation
    )
    return generation_batch // trainer.num_generations


def check_trainer(trainer: DictConfig) -> None:
    """The GRPO hyper-parameters (TRL GRPOConfig fields) that TRL accepts but cannot train with."""
    t = "trainer"
    lr = _number(t, trainer, "learning_rate")
    if lr is None or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"trainer.learning_rate={lr!r}: must be > 0")
    beta = _number(t, trainer, "beta")
    if beta is not None and (beta < 0 or not math.isfinite(beta)):
        raise ConfigError(f"trainer.beta={beta!r}: the KL weight must be >= 0 (a negative one rewards drifting away)")
    temperature = _number(t, trainer, "temperature")
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"trainer.temperature={temperature!r}: must be > 0 (sampling needs it; greedy rollouts give "
                          "every completion of a group the same reward)")
    for key in ("max_completion_length", "per_device_train_batch_size", "gradient_accumulation_steps",
                "num_iterations", "num_generations"):
        _positive_int(t, trainer, key, allow_none=key not in ("per_device_train_batch_size", "num_generations"))
    if trainer.num_generations < 2:
        raise ConfigError(f"trainer.num_generations={trainer.num_generations}: GRPO needs at least 2 completions per "
                          "prompt (the advantage is the reward relative to its group)")
    logging_steps = _number(t, trainer, "logging_steps")
    if logging_steps is not None and not logging_steps > 0:
        raise ConfigError(f"trainer.logging_steps={logging_steps!r}: must be > 0")
    max_steps = trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be >= 1 (or -1 to train trainer.num_train_epochs)")
    if max_steps == -1 and not (trainer.get("num_train_epochs") or 0) > 0:
        raise ConfigError("trainer.max_steps=-1 needs trainer.num_train_epochs > 0")
    loss = trainer.get("loss_type", "dapo")
    if loss not in LOSS_TYPES:
        raise ConfigError(f"trainer.loss_type={loss!r}: must be one of {', '.join(LOSS_TYPES)}")
    level = trainer.get("importance_sampling_level", "token")
    if level not in ("token", "sequence"):
        raise ConfigError(f"trainer.importance_sampling_level={level!r}: must be token (GRPO) or sequence (GSPO)")
    processes = world_size()
    steps_per_generation = trainer.get("steps_per_generation") or trainer.gradient_accumulation_steps
    batch = trainer.per_device_train_batch_size * processes * steps_per_generation
    if batch % trainer.num_generations:
        raise ConfigError(
            f"trainer.num_generations={trainer.num_generations} does not divide the generation batch of {batch} "
            f"completions (per_device_train_batch_size {trainer.per_device_train_batch_size} x {processes} "
            f"process(es) x {steps_per_generation} steps per generation): every prompt needs its whole group"
        )
    save_steps = trainer.get("save_steps")
    if trainer.get("save_strategy", "steps") == "steps" and save_steps is not None:
        if isinstance(save_steps, bool) or not isinstance(save_steps, (int, float)) or save_steps <= 0:
            raise ConfigError(f"trainer.save_steps={save_steps!r}: must be > 0 (set trainer.save_strategy=no to "
                              "save no checkpoint)")
        # A checkpoint inside a block of reused rollouts (num_iterations > 1, or a generation batch spanning
        # several optimizer steps) cannot be resumed exactly: the block's rollouts are not saved.
        block = trainer.num_iterations * steps_per_generation / trainer.gradient_accumulation_steps
        if isinstance(save_steps, int) and block > 1 and block == int(block) and save_steps % int(block):
            raise ConfigError(
                f"trainer.save_steps={save_steps}: must be a multiple of {int(block)}, the optimizer steps that reuse "
                "one batch of rollouts (num_iterations x steps_per_generation / gradient_accumulation_steps), so that "
                "every checkpoint resumes exactly"
            )


def check_eval_settings(section: str, batch_size: Any, *, num_samples: Any = 0, max_new_tokens: Any = 1) -> None:
    """``eval.*`` of either entry point: batch size and new tokens >= 1, a number of items >= 0."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{section}.batch_size={batch_size!r}: must be a whole number >= 1")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 0):
        raise ConfigError(f"{section}.num_samples={num_samples!r}: must be a whole number >= 0 (0 = no held-out "
                          "scoring)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"{section}.max_new_tokens={max_new_tokens!r}: must be a whole number >= 1")


def check_heldout_interval(eval_cfg: DictConfig) -> None:
    """eval.every_steps (null or >= 1, with held-out items), eval.best_metric (a logged heldout/ key or null),
    eval.best_mode (max or min): the scoring during training (audiothink/heldout_eval.py)."""
    from audiothink.heldout_eval import metric_problem

    every = eval_cfg.get("every_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"eval.every_steps={every!r}: must be a whole number >= 1 (or null: score only before "
                          "and after training)")
    if every is not None and eval_cfg.get("num_samples") == 0:
        raise ConfigError(f"eval.every_steps={every}: eval.num_samples=0 leaves no held-out items to score")
    metric = eval_cfg.get("best_metric")
    if metric is not None and (problem := metric_problem(metric)):
        raise ConfigError(f"eval.best_metric={metric!r}: {problem}")
    mode = eval_cfg.get("best_mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"eval.best_mode={mode!r}: must be max (higher is better) or min (lower is better)")


def check_model(model: DictConfig) -> None:
    """model.*: the audio window, and the switches that must be true or false."""
    check_audio_window(model)
    for key in ("freeze_audio_encoder", "liger_kernels"):
        value = model.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"model.{key}={value!r}: must be true or false")


def check_audio_window(model: DictConfig) -> None:
    seconds = model.get("max_audio_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds > 0):
        raise ConfigError(f"model.max_audio_seconds={seconds!r}: must be > 0 (the model's audio window, in seconds)")


def check_reward_weights(reward: DictConfig) -> None:
    """All weights 0 and no formula: every reward is 0, every advantage 0, the run learns nothing."""
    entries = {k: v for k, v in reward.items() if k != "formula"}
    weights = [v.get("weight") for v in entries.values() if isinstance(v, DictConfig)]
    if reward.get("formula") is None and weights and all(w == 0 for w in weights):
        raise ConfigError(
            f"reward: every weight is 0 ({', '.join(entries)}) and there is no reward.formula: the total reward is "
            "0 for every completion, so no step would change the model"
        )


def check_train_config(cfg: DictConfig) -> None:
    """Everything in a training config that can be judged without data or a model."""
    check_trainer(cfg.trainer)
    check_model(cfg.model)
    check_eval_settings("eval", cfg.eval.batch_size, num_samples=cfg.eval.num_samples,
                        max_new_tokens=cfg.eval.max_new_tokens)
    check_heldout_interval(cfg.eval)
    check_reward_weights(cfg.reward)
    threads = cfg.get("cpu_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"cpu_threads={threads!r}: must be a whole number >= 1 (or null: torch's default)")
    mode = cfg.get("force_mode")
    if mode is not None and mode not in FORCE_PREFILLS:
        raise ConfigError(f"force_mode={mode!r}: must be null (the model chooses), think or direct")
    cache = cfg.get("rollout", {}).get("compile_cache_dir")
    if cache is not None and (not isinstance(cache, str) or not cache.strip()):
        raise ConfigError(f"rollout.compile_cache_dir={cache!r}: must be a folder path (or null: the default cache)")
    limit = cfg.data.get("max_prompt_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.max_prompt_tokens={limit!r}: must be a whole number >= 1 (or null: no limit)")


def check_dataset_size(rows: int, trainer: DictConfig) -> None:
    """A training set with fewer rows than one step's prompts gives zero steps (and an untrained final/)."""
    need = prompts_per_step(trainer)
    if rows < need:
        raise ConfigError(
            f"the training set has {rows} usable row(s), fewer than the {need} prompts of one step "
            f"(per_device_train_batch_size x processes x steps_per_generation / num_generations): no step could run"
        )
