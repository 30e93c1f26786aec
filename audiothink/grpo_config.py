"""The trainer group, as TRL's GRPOConfig: unknown fields refused, the rollout block and the launched engine's
fields merged in, bf16 off where there is no GPU, TRL's own checks as one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink")


def build_grpo_config(
    trainer_cfg: DictConfig,
    *,
    output_dir: Path,
    seed: int,
    reward_weights: list[float],
    rollout: DictConfig | None = None,
    engine: dict[str, Any] | None = None,
):
    """TRL's GRPOConfig from the trainer group, plus the fields the rollout block and the launched engine
    set (`engine`: audiothink.plumbing.sharding.cpu_process_settings)."""
    import dataclasses

    import torch
    from trl import GRPOConfig

    kwargs: dict[str, Any] = OmegaConf.to_container(trainer_cfg, resolve=True)
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"trainer: unknown GRPOConfig field(s) {unknown}")
    if rollout is not None:  # rollout.engine -> use_vllm; the trainer.vllm_* fields are TRL's (audiothink/vllm_rollout.py)
        from audiothink.vllm_rollout import rollout_grpo_fields

        kwargs.update(rollout_grpo_fields(rollout, kwargs))
    if engine:
        if clash := sorted(set(engine) & set(kwargs)):
            raise ConfigError(f"trainer: {clash} are set for the launched engine (audiothink/plumbing/sharding.py), not trainer.*")
        kwargs.update(engine)
    if not torch.cuda.is_available() and kwargs.get("bf16", True) is not False:
        # TRL turns bf16 on when unset, which transformers then refuses on a CPU-only machine.
        if kwargs.get("bf16"):
            log.warning("trainer.bf16=true without a GPU: turned off")
        kwargs["bf16"] = False
    # the run folder's name names the run in W&B and other trackers, unless trainer.run_name says otherwise
    kwargs.setdefault("run_name", Path(output_dir).name)
    try:
        return GRPOConfig(output_dir=str(output_dir), seed=seed, reward_weights=reward_weights, **kwargs)
    except ValueError as e:  # TRL's own checks (audiothink.plumbing.validate catches the known ones before)
        raise ConfigError(f"trainer: {str(e).splitlines()[0]}") from e

