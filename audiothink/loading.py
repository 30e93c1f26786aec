"""The model group, loaded: checkpoint path checks, processor, model (dtype, attention kernel), PEFT config.

Example::

    from omegaconf import OmegaConf
    from audiothink.loading import load_model_and_processor
    from audiothink.toy import TOY_MODEL_DIR
    model, processor = load_model_and_processor(OmegaConf.create({
        "path": str(TOY_MODEL_DIR), "cls": "transformers.Qwen2AudioForConditionalGeneration",
        "dtype": "float32", "attn_implementation": "sdpa"}))
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink")


def _looks_local(path: str) -> bool:
    # A hub id is "owner/name"; anything absolute, relative-dotted, home-relative or deeper is a directory.
    return path.startswith(("/", "./", "../", "~")) or path.count("/") != 1 or os.path.exists(path)


def _hub_cache_copy(repo_id: str) -> str | None:
    """The folder of ``repo_id`` in the local Hugging Face cache, if a download left one there (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a hint only: an odd id or cache gives none
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def check_model_path(path: str) -> None:
    """Fail at once on a model.path that is not a local checkpoint folder: missing, without config.json, a LoRA
    adapter, or a hub id. Nothing is downloaded: a hub id would fail only after transformers' retries (78 s
    offline), or download 15 GB unasked."""
    if not path:
        raise ConfigError("model.path is empty: set it to a local checkpoint folder")
    p = Path(path).expanduser()
    if not p.is_dir():
        if not _looks_local(path):
            cached = _hub_cache_copy(path)
            where = (f"the hub cache has one: {cached}" if cached else
                     f"e.g. hf download {path} --local-dir /models/{path.split('/')[-1]}")
            raise ConfigError(f"model.path={path!r}: no such folder, and hub ids are not downloaded: set it to a local "
                              f"copy of the checkpoint ({where})")
        raise ConfigError(f"model.path={path!r}: no such checkpoint directory")
    if not (p / "config.json").is_file():
        if (p / "adapter_config.json").is_file():
            try:
                adapter = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
                base = adapter.get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError):
                base = None
            on = f" ({base})" if isinstance(base, str) and base else ""
            raise ConfigError(f"model.path={path!r}: a LoRA adapter (adapter_config.json), not a model: evaluate it "
                              f"with adapter={path} on its base model{on} (python -m audiothink.evaluate)")
        raise ConfigError(f"model.path={path!r}: directory has no config.json, it is not a checkpoint")


def import_object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def resolve_attention(name: str) -> str:
    """`auto`: flash_attention_2 where the flash-attn package and a CUDA GPU are there, sdpa otherwise."""
    if name != "auto":
        return name
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_processor(model_cfg: DictConfig):
    """The checkpoint's processor (tokenizer + feature extractor): cheap, so loaded before the data is read."""
    from transformers import AutoProcessor

    check_model_path(model_cfg.path)
    processor_cls = import_object(model_cfg.processor) if model_cfg.get("processor") else AutoProcessor
    return processor_cls.from_pretrained(model_cfg.path)


def load_model_and_processor(model_cfg: DictConfig, processor=None):
    """The model (``model.cls`` from ``model.path``, dtype, attention kernel) and its processor."""
    import torch

    from audiothink.plumbing.sharding import keep_used_weight_renamings

    check_model_path(model_cfg.path)
    if model_cfg.get("liger_kernels"):
        from audiothink.models import use_liger_kernels

        use_liger_kernels(model_cfg.cls)  # before the model is built: it swaps transformers' module classes
    cls = import_object(model_cfg.cls)
    model = cls.from_pretrained(
        model_cfg.path,
        dtype=getattr(torch, model_cfg.dtype),
        attn_implementation=resolve_attention(model_cfg.attn_implementation),
    )
    keep_used_weight_renamings(model)  # saves under the hub names after a DeepSpeed ZeRO-3 load too
    if model_cfg.get("freeze_vision_tower"):
        from audiothink.models import freeze_idle_towers

        frozen = freeze_idle_towers(model)
        log.info("model.freeze_vision_tower: %.1f M vision-encoder parameters frozen (never run on audio)",
                 frozen / 1e6)
    if model_cfg.get("router_aux_loss_coef") is not None:
        set_router_aux_loss(model, model_cfg.router_aux_loss_coef)
    if model_cfg.get("freeze_audio_encoder"):
        from audiothink.models import freeze_audio_encoder

        try:
            frozen, trainable = freeze_audio_encoder(model)
        except ValueError as e:
            raise ConfigError(f"model.freeze_audio_encoder=true: {e}") from e
        log.info("model.freeze_audio_encoder: %d audio-encoder parameters frozen (%.1f M); %.1f M parameters "
                 "left to train", frozen, frozen / 1e6, trainable / 1e6)
    return model, processor if processor is not None else load_processor(model_cfg)


def set_router_aux_loss(model, coef: float) -> None:
    """A mixture-of-experts model's router load-balancing loss in GRPO: weight ``coef`` (``model.router_aux_loss_coef``;
    0.0 turns it off). TRL's GRPOTrainer reads the weight off the model's text config (unless its own
    ``router_aux_loss_coef`` is set) and, when it is not 0, asks the policy passes for the router logits and adds
    ``coef`` x the load-balancing loss to the loss (logged as ``aux_loss``). Without this the checkpoint's own
    pretraining weight would apply unasked (Qwen3-Omni's config.json: 0.001). ``output_router_logits`` stays false,
    so no other pass (rollout, old and reference log-probs) computes router logits. A ConfigError for a model
    without a router."""
    text = model.config.get_text_config()
    if not hasattr(text, "router_aux_loss_coef") or not hasattr(text, "output_router_logits"):
        raise ConfigError(f"model.router_aux_loss_coef={coef}: {type(model).__name__} has no mixture-of-experts "
                          "router; remove the key")
    text.router_aux_loss_coef = float(coef)
    text.output_router_logits = False
    if hasattr(model, "router_aux_loss_coef"):  # the thinker copies the weight off its config when built
        model.router_aux_loss_coef = float(coef)


def _peft_rewrites_regex(model) -> bool:
    """Whether PEFT rewrites a regex ``target_modules`` for ``model`` before matching it. For the mixture-of-experts
    models whose expert layout changed in transformers 5 (Qwen3-Omni's thinker among them), PEFT 0.21
    (utils/transformers_weight_conversion.py, ``_convert_peft_config_moe``) resolves the regex to the *leaf* names it
    matched, {q_proj, k_proj, ...}, and then wraps every module ending in them: the audio encoder's q/k/v too."""
    try:
        from peft.utils.transformers_weight_conversion import (_MODEL_TO_CONVERSION_PATTERN, _MOE_FUSED_TARGETS,
                                                               _MOE_TARGET_MODULE_MAPPING)
    except ImportError:  # another PEFT: resolve anyway, which matches the same modules
        return True
    # PEFT's own conditions for the rewrite (the others, Qwen2.5-Omni's thinker among them, keep the regex)
    base = _MODEL_TO_CONVERSION_PATTERN.get(getattr(model.config, "model_type", None))
    return bool(base and _MOE_TARGET_MODULE_MAPPING.get(base) and _MOE_FUSED_TARGETS.get(base))


def build_peft_config(lora_cfg: DictConfig | None, model=None):
    """PEFT's LoraConfig from ``model.lora`` (None: full fine-tuning). With ``model``, a regex ``target_modules`` that
    PEFT would rewrite for this model (:func:`_peft_rewrites_regex`) is resolved here to the full names of the
    modules it matches, which PEFT takes as they are: the adapter goes exactly where the regex says."""
    if lora_cfg is None:
        return None
    import re

    from peft import LoraConfig

    target = lora_cfg.target_modules
    if model is not None and isinstance(target, str) and _peft_rewrites_regex(model):
        target = sorted(name for name, _ in model.named_modules() if name and re.fullmatch(target, name))
        if not target:
            raise ConfigError(f"model.lora.target_modules={lora_cfg.target_modules!r} matches no module of "
                              f"{type(model).__name__}")
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        # a string is a full-match regex over module names (keeps LoRA off the audio encoder)
        target_modules=target if isinstance(target, str) else list(target),
        # parameters (not modules) by name suffix: a mixture of experts' fused 3-D expert weights (PEFT >= 0.17)
        target_parameters=list(lora_cfg.target_parameters) if lora_cfg.get("target_parameters") else None,
        task_type="CAUSAL_LM",
    )


def load_model_config(model_cfg: DictConfig):
    """The checkpoint's config.json alone (no weights, milliseconds): the model type and the text model's context,
    which the row checks need before the weights load."""
    from transformers import AutoConfig

    check_model_path(model_cfg.path)
    return AutoConfig.from_pretrained(model_cfg.path)


def model_context(model_config) -> int | None:
    """The text model's context in tokens (``max_position_embeddings`` of the text config), None if it has none."""
    n = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None

