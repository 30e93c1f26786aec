"""The sharded engines `accelerate launch` selects (FSDP2, DeepSpeed ZeRO), on GPUs and on CPU processes.

The launcher names the engine in the environment of every process (`ACCELERATE_USE_FSDP` + `FSDP_VERSION`,
`ACCELERATE_USE_DEEPSPEED` + `ACCELERATE_DEEPSPEED_ZERO_STAGE`). On GPUs accelerate honours it. On CPU
processes (a gloo process group: the tests, a machine without GPUs) accelerate 1.15 does not, and says
nothing:

- FSDP: `AcceleratorState` switches to FSDP only for GPU-like process groups. `--config_file fsdp.yaml`
  on CPU trains with plain DDP, every process holding the whole model and optimizer.
- DeepSpeed: takes over only in a run not marked as a CPU run (`ACCELERATE_USE_CPU`, which multi-process
  CPU runs need for their gloo group), and in such a run, without an explicit backend, each process
  believes it trains alone (world size 1).

`cpu_process_settings` (before the training arguments exist) and `fsdp_on_cpu_processes` (around the
creation of the trainer's accelerator) make both engines run on CPU processes; `check_engine` stops a
run whose engine is not the one the launcher asked for, on any hardware; `save_full_model` writes the
final weights as one checkpoint whatever the engine's checkpoint format.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launched_engine() -> str | None:
    """The sharded engine the launcher asked for ("FSDP2", "DeepSpeed ZeRO-3", ...), or None (DDP, one process)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return f"DeepSpeed ZeRO-{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    if _env_flag("ACCELERATE_USE_FSDP"):
        return f"FSDP{os.environ.get('FSDP_VERSION', '1')}"
    return None


def running_engine(accelerator) -> str | None:
    """The sharded engine `accelerator` trains with, named as in `launched_engine`, or None."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    if state.distributed_type == DistributedType.FSDP:
        return f"FSDP{state.fsdp_plugin.fsdp_version}"
    return None


def cpu_process_settings() -> dict[str, Any]:
    """Without CUDA: prepare this process for the launched engine; returns GRPOConfig fields it needs.

    - Mixed precision from the launcher (the configs say bf16, for GPUs) is turned off, as
      trainer.bf16 is (audiothink.grpo_config.build_grpo_config): the toy and CPU runs train in float32.
    - DeepSpeed: its CPU accelerator (`DS_ACCELERATOR=cpu`) and an explicit gloo backend, so that each
      process knows the world size; the run must not be marked as a CPU run.
    - Otherwise (DDP, FSDP): the run is marked as a CPU run (`ACCELERATE_USE_CPU`, what `accelerate launch
      --cpu` exports), so that the processes of `torchrun` / `accelerate launch` form one gloo group
      instead of each training alone; FSDP is then switched on by `fsdp_on_cpu_processes`.
    """
    import torch

    if torch.cuda.is_available():
        return {}
    from audiothink.plumbing.errors import ConfigError

    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision != "no":
        log.warning("mixed_precision=%s from the launcher without a GPU: turned off", precision)
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        if _env_flag("ACCELERATE_USE_CPU"):
            raise ConfigError(
                "DeepSpeed was launched on a run marked as CPU-only (ACCELERATE_USE_CPU / --cpu): accelerate "
                "would train without DeepSpeed. Launch without --cpu; DeepSpeed's CPU accelerator is used."
            )
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return {"ddp_backend": "gloo"} if "LOCAL_RANK" in os.environ else {}
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return {}


@contextmanager
def fsdp_on_cpu_processes():
    """Around `Accelerator(...)`: on a CPU process group launched with FSDP, let accelerate set FSDP up.

    accelerate's `AcceleratorState` takes the FSDP plugin only when the process group's type is a GPU-like
    one (accelerate 1.15, state.py); a CPU group is MULTI_CPU. For the duration of the accelerator's
    creation the group is presented as MULTI_GPU (its backend, gloo, and device, the CPU, are already set
    and stay), so that accelerate's own code builds the FSDP state; everything after sees FSDP. A no-op
    on GPUs, without FSDP, and when no CPU process group exists.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    if not (_env_flag("ACCELERATE_USE_FSDP") and shared.get("distributed_type") == DistributedType.MULTI_CPU):
        yield
        return
    shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shared.get("distributed_type") == DistributedType.MULTI_GPU:  # the accelerator was not built
            shared["distributed_type"] = DistributedType.MULTI_CPU


def check_engine(accelerator) -> None:
    """Stop a run that would train with another engine than the launcher asked for (ConfigError)."""
    from audiothink.plumbing.errors import ConfigError

    wanted, running = launched_engine(), running_engine(accelerator)
    if wanted != running:
        raise ConfigError(
            f"the launcher asked for {wanted or 'no sharded engine'}, but this run would train with "
            f"{running or 'plain data parallelism (every process holding the whole model)'} "
            f"(process group: {accelerator.state.distributed_type.value}, backend {accelerator.state.backend})"
        )


def keep_used_weight_renamings(model) -> None:
    """After `from_pretrained`: keep, for the save, only the checkpoint-name renamings the load used.

    transformers 5.23 saves weights under the names they were loaded from by reversing the renamings
    recorded at load. Its usual loader records the renamings that matched a weight; its DeepSpeed ZeRO-3
    loader records all of them, legacy ones included, and reversing the unused `language_model.model.model
    -> model.language_model` one writes the language model as `language_model.model.model.*` (final/ and
    every checkpoint of a ZeRO-3 run; transformers reads it back, other loaders such as vLLM's do not).
    Keeping the used ones, as the usual loader does, writes the hub names. A no-op for any other load.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if c.was_used()]


@contextmanager
def whole_weights(model):
    """Inside: `model` usable for a forward pass outside the trainer (the held-out scoring before training).

    Under DeepSpeed ZeRO-3 transformers loads the weights already partitioned (each process holds a part
    of every tensor) as soon as the training arguments exist, and no DeepSpeed engine gathers them before
    the trainer is built: a forward pass would fail ("'weight' must be 2-D"). Here they are gathered on
    every process (the whole model's memory on each, as TRL's rollouts under ZeRO-3 also take) and
    partitioned again on exit. Anything else is used as it is.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield model


def save_full_model(trainer, output_dir: str) -> None:
    """Write the whole weights (or the LoRA adapter) to `output_dir` as one `from_pretrained` checkpoint.

    All processes call it. Under FSDP with sharded checkpoints (fsdp.yaml) the Trainer's `save_model`
    writes no weights at all; the state dict type is switched to FULL_STATE_DICT for this save (the shards
    are gathered, rank 0 writes; accelerate's documented way to end a sharded run) and back. DeepSpeed
    ZeRO-3 gathers the 16-bit weights itself (zero3_save_16bit_model in zero3.yaml); DDP, ZeRO-2 and
    single-process runs hold whole weights already.
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not trainer.is_fsdp_enabled or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        trainer.save_model(output_dir)
        return
    fields = ("state_dict_type", "state_dict_config", "optim_state_dict_config")
    previous = {name: getattr(plugin, name) for name in fields}
    plugin.state_dict_config = plugin.optim_state_dict_config = None  # rebuilt for the new type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(output_dir)
    finally:
        for name, value in previous.items():
            setattr(plugin, name, value)
