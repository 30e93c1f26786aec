"""Checkpoints: which one a resume starts from, and loading full-model weights back under the right names.

Why this module exists: transformers 5 writes checkpoints under the *hub* names (``language_model.model.…``,
``audio_tower.…``) while the model in memory uses its own names (``model.language_model.…``), and the
Trainer's resume loads a full (non-LoRA) checkpoint with ``load_state_dict(strict=False)``: every tensor is
"unexpected", every parameter "missing", and the run goes on from the *starting* weights with the restored
optimizer, after a warning (transformers issues #43701, #40187). Here the names are mapped with
transformers' own conversion table (the one ``save_pretrained`` applied, reverted) and any key left
missing or unexpected is an error.

A checkpoint is complete once its ``trainer_state.json`` exists: the Trainer writes it after the weights,
optimizer, scheduler and RNG states. A run killed while saving leaves a newer, incomplete folder behind;
``resume=true`` skips it and says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from audiothink.errors import ConfigError

log = logging.getLogger("audiothink")

__all__ = ["CheckpointError", "complete_checkpoints", "resume_checkpoint", "checkpoint_step", "checkpoint_key_map",
           "load_full_checkpoint", "check_adapter_checkpoint"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint whose tensors do not match the model (missing, unexpected or misshapen keys)."""


def _step(path: Path) -> int:
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else -1


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders that hold a ``trainer_state.json``, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step(p) >= 0]
    return sorted((p for p in found if (p / TRAINER_STATE).is_file()), key=_step)


def resume_checkpoint(run_dir: str | os.PathLike, resume) -> str | None:
    """What ``resume`` (the config value) means for ``run_dir``: a checkpoint folder to start from, or None.

    ``false``/``null``: None. ``true``: the newest complete checkpoint of the run folder (incomplete, newer
    ones are skipped with a warning); none at all is a ConfigError. A path: that folder, which must be a
    complete checkpoint. Checked before anything is loaded.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("false", "")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        complete = complete_checkpoints(run_dir)
        partial = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p not in complete]
        if not complete:
            detail = f" ({len(partial)} incomplete: {sorted(p.name for p in partial)})" if partial else ""
            raise ConfigError(
                f"resume=true: no complete checkpoint in {run_dir}{detail}; "
                "start a new run (resume=false) or pass resume=<checkpoint folder>"
            )
        newest = complete[-1]
        skipped = [p.name for p in partial if _step(p) > _step(newest)]
        if skipped:
            log.warning("resume: skipping incomplete checkpoint(s) %s (no %s; the run stopped while saving)",
                        skipped, TRAINER_STATE)
        return str(newest)
    path = Path(str(resume)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"resume={resume!r}: no such checkpoint folder")
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"resume={resume!r}: not a complete checkpoint (no {TRAINER_STATE})")
    return str(path)


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The optimizer step a complete checkpoint was saved at (its trainer_state.json's global_step)."""
    return int(json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


# -- full-model weights ----------------------------------------------------------------------------------


def checkpoint_key_map(model: torch.nn.Module) -> dict[str, str]:
    """``{name in the checkpoint files: name in model.state_dict()}``, as ``save_pretrained`` renames them.

    Computed by running transformers' own save-time conversion (``revert_weight_conversion``) over the
    model's state dict and following each tensor object to its new name. Only renamings are supported (all
    that Qwen2-Audio and the Qwen2.5-Omni thinker use); a conversion that builds new tensors (e.g. fused
    projections) raises NotImplementedError.
    """
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    name_of = {id(t): k for k, t in state.items()}
    saved = revert_weight_conversion(model, dict(state)) if hasattr(model, "config") else state
    mapping = {}
    for ckpt_name, tensor in saved.items():
        if id(tensor) not in name_of:
            raise NotImplementedError(f"checkpoint tensor {ckpt_name!r} is converted, not renamed: cannot map it")
        mapping[ckpt_name] = name_of[id(tensor)]
    return mapping


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return load_file(str(folder / SAFE_WEIGHTS_NAME), device="cpu")
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        if (folder / index_name).is_file():
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                if shard.endswith(".safetensors"):
                    tensors.update(load_file(str(folder / shard), device="cpu"))
                else:
                    tensors.update(torch.load(folder / shard, map_location="cpu", weights_only=True))
            return tensors
    if (folder / WEIGHTS_NAME).is_file():
        return torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no model weights ({SAFE_WEIGHTS_NAME}, an index, or {WEIGHTS_NAME})")


def load_full_checkpoint(model: torch.nn.Module, folder: str | os.PathLike) -> int:
    """Load the full-model weights of a checkpoint folder into ``model``, in place; return the tensor count.

    Names are mapped with :func:`checkpoint_key_map`. Raises :class:`CheckpointError` on any missing,
    unexpected or misshapen key. A parameter absent from the files is accepted only when it is tied to one
    that is there (``save_pretrained`` may drop the tied copy, e.g. the LM head of a tied-embedding model).
    """
    folder = Path(folder)
    tensors = _read_tensors(folder)
    mapping = checkpoint_key_map(model)
    state = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in mapping)
    renamed = {mapping[k]: v for k, v in tensors.items() if k in mapping}
    # tied parameters share storage: loading one loads the other
    storage = {k: t.untyped_storage().data_ptr() for k, t in state.items()}
    present = {storage[k] for k in renamed}
    missing = sorted(k for k in state if k not in renamed and storage[k] not in present)
    shapes = sorted(k for k, v in renamed.items() if tuple(v.shape) != tuple(state[k].shape))
    if unexpected or missing or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what} (first: {keys[:3]})")
        raise CheckpointError(f"{folder}: the checkpoint does not match the model: " + "; ".join(parts))
    result = model.load_state_dict(renamed, strict=False)
    left = [k for k in result.missing_keys if storage.get(k) not in present]
    if left or result.unexpected_keys:
        raise CheckpointError(f"{folder}: loading left {left[:3]} missing, {result.unexpected_keys[:3]} unexpected")
    return len(renamed)


def check_adapter_checkpoint(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """A LoRA checkpoint must hold exactly the adapter tensors of ``model`` (a PEFT model), same shapes."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no adapter_model.safetensors (is this a LoRA run's checkpoint?)")
    saved = load_file(str(path), device="cpu")
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{folder}: the adapter does not match the model: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]}), {len(shapes)} with another shape"
        )
