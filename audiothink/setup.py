"""Builders shared by the entry points: each turns one config group into the object it describes."""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from audiothink.errors import ConfigError

log = logging.getLogger("audiothink")

TOY_MODEL_DIR = Path(__file__).parent / "toy" / "assets" / "model"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("toy_model_dir"):
        OmegaConf.register_new_resolver("toy_model_dir", lambda: str(TOY_MODEL_DIR))


# -- model -------------------------------------------------------------------------------------------------


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


def _import(dotted: str):
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
    processor_cls = _import(model_cfg.processor) if model_cfg.get("processor") else AutoProcessor
    return processor_cls.from_pretrained(model_cfg.path)


def load_model_and_processor(model_cfg: DictConfig, processor=None):
    """The model (``model.cls`` from ``model.path``, dtype, attention kernel) and its processor."""
    import torch

    from audiothink.sharding import keep_used_weight_renamings

    check_model_path(model_cfg.path)
    if model_cfg.get("liger_kernels"):
        from audiothink.models import use_liger_kernels

        use_liger_kernels(model_cfg.cls)  # before the model is built: it swaps transformers' module classes
    cls = _import(model_cfg.cls)
    model = cls.from_pretrained(
        model_cfg.path,
        dtype=getattr(torch, model_cfg.dtype),
        attn_implementation=resolve_attention(model_cfg.attn_implementation),
    )
    keep_used_weight_renamings(model)  # saves under the hub names after a DeepSpeed ZeRO-3 load too
    if model_cfg.get("freeze_audio_encoder"):
        from audiothink.models import freeze_audio_encoder

        try:
            frozen, trainable = freeze_audio_encoder(model)
        except ValueError as e:
            raise ConfigError(f"model.freeze_audio_encoder=true: {e}") from e
        log.info("model.freeze_audio_encoder: %d audio-encoder parameters frozen (%.1f M); %.1f M parameters "
                 "left to train", frozen, frozen / 1e6, trainable / 1e6)
    return model, processor if processor is not None else load_processor(model_cfg)


def build_peft_config(lora_cfg: DictConfig | None):
    if lora_cfg is None:
        return None
    from peft import LoraConfig

    target = lora_cfg.target_modules
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        # a string is a full-match regex over module names (keeps LoRA off the audio encoder)
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )


# -- rewards -----------------------------------------------------------------------------------------------


class _Named:
    """A function (or partial) under the reward's config name, so the metric is rewards/<key>/mean."""

    def __init__(self, name: str, fn):
        self.__name__ = name
        self.fn = fn
        self.batch_wide = getattr(fn, "batch_wide", False)

    def __call__(self, completions, **columns):
        return self.fn(completions, **columns)


class _NamedAsync(_Named):
    async def __call__(self, completions, **columns):
        return await self.fn(completions, **columns)


def named_reward(name: str, fn):
    """Give `fn` the name `name`: set on class instances, wrapped for functions and partials."""
    import functools
    import inspect

    if not isinstance(fn, functools.partial) and not inspect.isroutine(fn):
        fn.__name__ = name
        return fn
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return (_NamedAsync if inspect.iscoroutinefunction(inner) else _Named)(name, fn)


FORMULA_KEY, TOTAL_NAME = "formula", "total"


def build_rewards(reward_cfg: DictConfig) -> tuple[list, list[float]]:
    """Instantiate each named reward; its config key becomes its name (and metric rewards/<name>/mean).

    An optional ``formula`` string (see audiothink/formula.py) adds one more, batch-wide reward named
    ``total`` with weight 1, evaluated after all the others; unknown names in it are a ConfigError here,
    before any model or data is loaded.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    funcs, weights, formula = [], [], None
    for name, entry in reward_cfg.items():
        if name == FORMULA_KEY:
            formula = entry
            continue
        if name == TOTAL_NAME:
            raise ConfigError(f"reward.{name}: the name is reserved for the value of reward.formula")
        if not isinstance(entry, DictConfig) or "fn" not in entry or "weight" not in entry:
            raise ConfigError(f"reward.{name}: expected a mapping with 'fn' (a _target_) and 'weight'")
        try:
            fn = instantiate(entry.fn)
        except MissingMandatoryValue as e:  # e.g. judge=hf without judge.path
            raise ConfigError(f"reward.{name}: {str(e).splitlines()[0]} (set it on the command line)") from e
        except InstantiationException as e:
            # a bad argument (unknown field, a judge prompt asking for a missing field, ...): say where
            if isinstance(e.__cause__, (ValueError, TypeError)):
                raise ConfigError(f"reward.{name}: {e.__cause__}") from e
            if str(e).startswith("Error locating target"):  # a misspelt _target_ (train() finds it before this)
                raise ConfigError(f"reward.{name}: {str(e).splitlines()[0]}") from e
            raise
        if not callable(fn):
            raise ConfigError(f"reward.{name}: {entry.fn.get('_target_')} did not build a callable")
        funcs.append(named_reward(name, fn))
        weights.append(float(entry.weight))
    if not funcs:
        raise ConfigError("reward: no reward configured")
    if formula is not None:
        from audiothink.formula import Formula

        funcs.append(Formula(formula, known=[f.__name__ for f in funcs]))
        weights.append(1.0)
    return funcs, weights


# -- trainer -----------------------------------------------------------------------------------------------


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
    set (`engine`: audiothink.sharding.cpu_process_settings)."""
    import dataclasses

    import torch
    from trl import GRPOConfig

    kwargs: dict[str, Any] = OmegaConf.to_container(trainer_cfg, resolve=True)
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"trainer: unknown GRPOConfig field(s) {unknown}")
    if rollout is not None:  # rollout.engine & co. -> use_vllm, vllm_mode, ... (audiothink/vllm_rollout.py)
        from audiothink.vllm_rollout import rollout_grpo_fields

        fields = rollout_grpo_fields(rollout)
        if clash := sorted(set(fields) & set(kwargs)):
            raise ConfigError(f"trainer: {clash} are set by the rollout: block (rollout.engine, ...), not trainer.*")
        kwargs.update(fields)
    if engine:
        if clash := sorted(set(engine) & set(kwargs)):
            raise ConfigError(f"trainer: {clash} are set for the launched engine (audiothink/sharding.py), not trainer.*")
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
    except ValueError as e:  # TRL's own checks (audiothink.validate catches the known ones before)
        raise ConfigError(f"trainer: {str(e).splitlines()[0]}") from e


class JsonlMetrics(TrainerCallback):
    """Every logged metric, one JSON object per line: greppable, and readable without TensorBoard.

    ``resumed``: the run continues from a checkpoint. transformers' end-of-run ``train_loss`` then divides the
    losses of this process's steps by *all* steps (``_total_loss_scalar / global_step``), a wrong mean; the
    record written here holds the mean over every step of the run instead, from the ``loss`` records in the
    file (each the mean of its logging window, weighted by the window's steps).
    """

    def __init__(self, path: Path, resumed: bool = False):
        self.path = Path(path)
        self.resumed = resumed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if self.resumed and "train_loss" in logs:
                mean = self._mean_step_loss()
                logs = {**logs, "train_loss": mean} if mean is not None else logs
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def _mean_step_loss(self) -> float | None:
        if not self.path.is_file():
            return None
        losses = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record.get("step"), int) and isinstance(record.get("loss"), (int, float)):
                losses[record["step"]] = float(record["loss"])
        total, previous = 0.0, 0
        for step in sorted(losses):
            total += losses[step] * (step - previous)
            previous = step
        return total / previous if previous else None


def drop_replayed(run_dir: Path, checkpoint: str | os.PathLike) -> dict[str, int]:
    """Before a resume from ``checkpoint``: drop the run's metric and completion records of later steps.

    The interrupted run logged steps after its last checkpoint; the resumed run logs them again. Records
    are keyed by the optimizer step they belong to (``step``); those after the checkpoint's step are removed
    from ``metrics.jsonl`` and ``completions.jsonl`` (rewritten atomically). Returns the counts dropped.
    """
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state["global_step"])
    dropped = {}
    for name in ("metrics.jsonl", "completions.jsonl"):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kept, n = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record_step = json.loads(line).get("step")
            except ValueError:
                n += 1  # a line cut by the kill
                continue
            if isinstance(record_step, int) and record_step > step:
                n += 1
            else:
                kept.append(line)
        if n:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            os.replace(tmp, path)
            log.info("resume from step %d: dropped %d record(s) of later steps from %s (they run again)",
                     step, n, name)
        dropped[name] = n
    return dropped


class SaveProcessor(TrainerCallback):
    """Checkpoints carry the processor too, so any checkpoint directory loads on its own."""

    def __init__(self, processor):
        self.processor = processor

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.processor.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}")


# -- data --------------------------------------------------------------------------------------------------


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


def prompt_limit(max_prompt_tokens: int | None, model_config, max_completion_length: int | None) -> tuple[int | None, str]:
    """The prompt length rows are held to, and how it came about (for messages).

    ``data.max_prompt_tokens``, capped by the model's context less ``trainer.max_completion_length`` (a prompt
    and its completion must fit in the positions the model has). A completion that leaves no room is a
    :class:`ConfigError`.
    """
    context = model_context(model_config) if model_config is not None else None
    if context is None:
        return max_prompt_tokens, f"data.max_prompt_tokens={max_prompt_tokens}"
    room = context - (max_completion_length or 0)
    if room < 1:
        raise ConfigError(f"trainer.max_completion_length={max_completion_length} leaves no room for a prompt in "
                          f"the model's context of {context} tokens (max_position_embeddings): lower it")
    if max_prompt_tokens is not None and max_prompt_tokens <= room:
        return max_prompt_tokens, f"data.max_prompt_tokens={max_prompt_tokens}"
    why = (f"the model's context of {context} tokens less trainer.max_completion_length={max_completion_length or 0}"
           + ("" if max_prompt_tokens is None else f", below data.max_prompt_tokens={max_prompt_tokens}"))
    return room, f"{room} tokens ({why})"


def shortest_clip(feature_extractor, model_type: str | None, max_audio_seconds: float | None) -> int:
    """:func:`audiothink.audio.min_clip_samples`, or a ConfigError when the window is shorter than that."""
    from audiothink.audio import min_clip_samples

    min_samples = min_clip_samples(feature_extractor, model_type, max_audio_seconds)
    if min_samples is None:
        raise ConfigError(f"model.max_audio_seconds={max_audio_seconds}: no clip this short can give the model "
                          f"({model_type}) the audio tokens it needs; raise it")
    return min_samples


def short_clip_check(model_cfg: DictConfig):
    """``(path, seconds, row_id) -> message or None``: the model's shortest-clip rule
    (:func:`audiothink.audio.min_clip_samples`), read from its processor and config.json (no weights), for a
    check before the model loads. Training's rows get it through :func:`row_checks`; evaluation calls this."""
    from audiothink.audio import short_clip_problem

    processor, model_type = load_processor(model_cfg), load_model_config(model_cfg).model_type
    min_samples = shortest_clip(processor.feature_extractor, model_type, model_cfg.get("max_audio_seconds"))
    return lambda path, clip_seconds, row_id=None: short_clip_problem(path, clip_seconds, min_samples, model_type,
                                                                      row_id)


def row_checks(processor, prompt: str, *, max_prompt_tokens: int | None, max_audio_seconds: float | None,
               model_config=None, max_completion_length: int | None = None):
    """The model's row checks (:class:`audiothink.data.RowChecks`), from its processor and config.json.

    The audio-token count of a clip follows the processor's own rule (:func:`audiothink.audio.clip_audio_tokens`);
    ``tests/test_short_clips.py`` checks it against the processor and a real forward pass at the boundary. The
    shortest clip the model can use is ``min_audio_samples`` (:func:`shortest_clip`: by ``model_config.model_type``,
    Qwen2-Audio needs two audio tokens a clip). Prompts are held to :func:`prompt_limit` (the model's context less the
    completion length, when ``model_config`` is given).
    """
    from audiothink.audio import SAMPLE_RATE, clip_audio_tokens
    from audiothink.data import RowChecks, render_prompt

    tok = processor.tokenizer
    fe = processor.feature_extractor
    window = int(fe.n_samples)
    if max_audio_seconds:
        window = min(window, int(round(max_audio_seconds * SAMPLE_RATE)))
    model_type = getattr(model_config, "model_type", None)
    min_samples = shortest_clip(fe, model_type, max_audio_seconds)
    limit, limit_text = prompt_limit(max_prompt_tokens, model_config, max_completion_length)
    if limit != max_prompt_tokens:
        log.info("data: prompts are held to %s", limit_text)
    markers = [getattr(processor, n, None) for n in ("audio_token", "audio_bos_token", "audio_eos_token")]
    control = tuple(sorted({t for t in [*tok.all_special_tokens, *markers] if t and len(t) > 1}))

    def prompt_tokens(sample, durations) -> int:
        content = [{"type": "audio"}] * len(sample.audio) + [{"type": "text", "text": render_prompt(sample, prompt)}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        # verbose=False: no "sequence length is longer than the maximum" warning; the limit is checked here
        n_text = len(tok(text, add_special_tokens=False, verbose=False)["input_ids"]) - len(sample.audio)  # one placeholder a clip
        return n_text + sum(clip_audio_tokens(int(round(d * SAMPLE_RATE)), hop_length=fe.hop_length, window=window)
                            for d in durations)

    return RowChecks(min_audio_samples=min_samples, control_tokens=control, prompt_tokens=prompt_tokens,
                     max_prompt_tokens=limit, model_type=model_type, prompt_limit=limit_text)


def build_dataset(data_cfg: DictConfig, *, prompt: str, max_audio_seconds: float | None, processor=None,
                  model_config=None, max_completion_length: int | None = None):
    """Training rows as a `datasets.Dataset`, plus the held-out samples (possibly empty).

    `data.format` picks the reader (unified, avqa, hf; audiothink/sources/), which validates every row,
    logs skips, clipped clips and rewrites, and applies the optional abstention transform (data.abstain).
    With the model's ``processor`` (and ``model_config``, its config.json), rows are also checked against the model
    (:func:`row_checks`): audio too short for the model, control tokens in the text, prompts over
    ``data.max_prompt_tokens`` or the model's context less ``max_completion_length``.
    """
    from audiothink.audio import AudioError
    from audiothink.data import DataError, to_dataset
    from audiothink.sources import load_training_data

    if data_cfg.generate_toy:
        from audiothink.toy.data import ensure_toy

        ensure_toy(Path(data_cfg.root))
    checks = None
    if processor is not None:
        checks = row_checks(processor, prompt, max_prompt_tokens=data_cfg.get("max_prompt_tokens"),
                            max_audio_seconds=max_audio_seconds, model_config=model_config,
                            max_completion_length=max_completion_length)
    try:
        train_samples, eval_samples = load_training_data(data_cfg, max_audio_seconds=max_audio_seconds,
                                                         checks=checks)
    except (DataError, AudioError):
        raise
    except ValueError as e:  # a data.* setting that cannot work (unknown format, field, share out of range)
        raise ConfigError(str(e)) from e
    return to_dataset(train_samples, prompt), eval_samples


def summarise(model, processor, samples, cfg: DictConfig) -> dict:
    """Greedy held-out accuracy and think statistics (overall, by difficulty, by task), in the run's forced
    mode if it has one."""
    from audiothink.formats import force_prefill
    from audiothink.inference import generate_answers, score

    outputs = generate_answers(
        model,
        processor,
        samples,
        cfg.prompt,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        max_audio_seconds=cfg.model.max_audio_seconds,
        prefill=force_prefill(cfg.get("force_mode")),  # checked at start-up (check_train_config)
    )
    return score(samples, outputs)
