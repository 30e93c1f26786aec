"""vLLM rollouts for audio models (`rollout.engine=vllm`): prompts vLLM can expand, weights it can load.

TRL's vLLM backend (`trl.generation.vllm_generation.VLLMGeneration`) knows images, not audio. For an audio
model it would go wrong in three places, each handled here:

1. **Prompts.** TRL sends the token ids it trains on. Ours are the processor's *expanded* ids: one
   `<|AUDIO|>` per audio frame. vLLM expands the placeholder itself, from the audio it is given, so it needs
   the *unexpanded* ids (one `<|AUDIO|>` per clip, between `<|audio_bos|>` and `<|audio_eos|>` as the chat
   template writes it) plus `multi_modal_data={"audio": [(wave, sampling_rate), ...]}`. Handed the expanded
   ids and no audio, vLLM generates from placeholder embeddings: the rollouts never hear the audio.
   `vllm_prompts` builds those rows from text or chat messages, `vllm_rows_from_training_ids` from the
   expanded training ids; `audio_token_counts` is vLLM's rule for how many placeholders a clip becomes,
   and every row is checked against it, so the prompt vLLM expands is the prompt trained on, token for token.
2. **Weight names.** TRL syncs weights under their in-memory names. transformers 5 renames checkpoints
   when loading (`model.language_model.*` in memory for `language_model.model.*` on disk); vLLM's loaders
   want the checkpoint names. `checkpoint_name_mapper` maps them back, for Qwen2-Audio and the
   Qwen2.5-Omni thinker (whose vLLM loader wants the full Omni checkpoint's `thinker.` names).
3. **Generation arguments.** The trainer bans the audio markers from sampling with HF's `suppress_tokens`,
   which vLLM's `SamplingParams` does not take: it becomes a `logit_bias` of -100 on those tokens.

`AudioVLLMGeneration` is TRL's engine with those three changes; `AudioGRPOTrainer` swaps it in when
`use_vllm` is set. Both of TRL's modes carry audio:

- **colocate** (vLLM inside the training process): the rows above, `LLM.generate` expands them.
- **server** (`trl vllm-serve` on its own GPUs), the way TRL 1.16 sends a server images: the main process
  posts each prompt's clips as a throwaway chat of OpenAI `input_audio` parts (float WAV, so the server
  decodes exactly the trainer's samples) to vLLM's `/v1/chat/completions/render` (`audio_features`), points
  the returned features' `mm_placeholders["audio"]` at the `<|AUDIO|>` runs of the *expanded* training ids
  (`place_audio_features`, which also checks each run against the length the server encodes its clip to),
  and generates from those ids + features through TRL's `VLLMClient.generate` (`/inference/v1/generate`).
  Weights go through TRL's `sync_weights` and the client's NCCL transfer, under the checkpoint names.

This module imports without vLLM; building the engine without it raises an ImportError that says how to
install it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
import soundfile as sf
import torch
from accelerate.utils import broadcast_object_list, gather_object, is_peft_model
from trl.generation.vllm_generation import VLLMGeneration, extract_logprobs

from audiothink.audio import SAMPLE_RATE, feat_extract_output_length

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[vllm]"'

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
            "(server mode too: TRL's client sends the weights through vLLM's NCCL weight transfer). On a machine "
            f"with a CUDA GPU run `{INSTALL_HINT}` (vLLM has no CPU build); or use the default rollout.engine=hf."
        )


def rollout_grpo_fields(rollout_cfg) -> dict[str, Any]:
    """The `rollout:` config block as TRL GRPOConfig fields (`use_vllm`, `vllm_mode`, ...)."""
    from audiothink.plumbing.errors import ConfigError

    engine = rollout_cfg.get("engine", "hf")
    if engine == "hf":
        return {"use_vllm": False}
    if engine != "vllm":
        raise ConfigError(f"rollout.engine must be 'hf' or 'vllm', got {engine!r}")
    if rollout_cfg.get("fast"):
        raise ConfigError("rollout.fast is the HF engine's compiled decode: leave it false with rollout.engine=vllm")
    mode = rollout_cfg.get("vllm_mode", "colocate")
    if mode not in VLLM_MODES:
        raise ConfigError(f"rollout.vllm_mode must be 'colocate' or 'server', got {mode!r}")
    if not vllm_installed():
        raise ConfigError(f"rollout.engine=vllm needs vLLM: `{INSTALL_HINT}` on a machine with a CUDA GPU")
    return {
        "use_vllm": True,
        "vllm_mode": mode,
        "vllm_gpu_memory_utilization": float(rollout_cfg.get("gpu_memory_utilization", 0.3)),
        "vllm_server_host": str(rollout_cfg.get("server_host", "0.0.0.0")),
        "vllm_server_port": int(rollout_cfg.get("server_port", 8000)),
    }


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


def expand_audio_placeholders(ids: Sequence[int], audio_id: int, counts: Sequence[int]) -> list[int]:
    """Replace the i-th single `audio_id` with `counts[i]` copies: what vLLM does to a prompt."""
    out, i = [], 0
    for t in ids:
        if t == audio_id:
            if i >= len(counts):
                raise ValueError(f"prompt has more audio placeholders than the {len(counts)} clips given")
            out.extend([audio_id] * counts[i])
            i += 1
        else:
            out.append(t)
    if i != len(counts):
        raise ValueError(f"prompt has {i} audio placeholders for {len(counts)} clips")
    return out


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


def strip_audio_markers(ids: Sequence[int], audio_id: int, bos_id: int, eos_id: int) -> list[int]:
    """Drop the `<|audio_bos|>`/`<|audio_eos|>` around each single placeholder (for vLLM versions whose
    prompt update writes them itself)."""
    ids = list(ids)
    drop = set()
    for i, t in enumerate(ids):
        if t == audio_id:
            if i > 0 and ids[i - 1] == bos_id:
                drop.add(i - 1)
            if i + 1 < len(ids) and ids[i + 1] == eos_id:
                drop.add(i + 1)
    return [t for i, t in enumerate(ids) if i not in drop]


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
    *,
    keep_markers: bool = True,
) -> list[dict]:
    """vLLM prompt rows `{"prompt_token_ids": ..., "multi_modal_data": {"audio": [(wave, sr), ...]}}`.

    `prompts`: per row, the rendered prompt text or a chat message list (rendered with the processor's
    chat template, generation prompt added); `waves`: per row, its clips in order. The ids are the
    tokenizer's, without the processor's placeholder expansion: exactly one `<|AUDIO|>` per clip, kept
    between its `<|audio_bos|>`/`<|audio_eos|>` unless `keep_markers=False`.
    """
    if len(prompts) != len(waves):
        raise ValueError(f"{len(prompts)} prompts for {len(waves)} rows of audio")
    audio_id, bos_id, eos_id = audio_token_ids(processor)
    rows = []
    for prompt, clips in zip(prompts, waves, strict=True):
        ids = list(processor.tokenizer(_rendered(processor, prompt))["input_ids"])
        unexpanded, runs = collapse_audio_runs(ids, audio_id)
        if unexpanded != ids:
            raise ValueError("prompt already holds expanded audio placeholders: pass the text before the processor")
        if len(runs) != len(clips):
            raise ValueError(f"prompt has {len(runs)} audio placeholders for {len(clips)} clips")
        if not keep_markers:
            ids = strip_audio_markers(ids, audio_id, bos_id, eos_id)
        rows.append(_row(ids, clips, sampling_rate))
    return rows


def vllm_rows_from_training_ids(
    processor,
    prompt_ids: Sequence[Sequence[int]],
    waves: Sequence[Sequence[np.ndarray]],
    sampling_rate: int,
    *,
    keep_markers: bool = True,
) -> list[dict]:
    """The same rows as `vllm_prompts`, from the processor-expanded ids the trainer trains on.

    Each run of `<|AUDIO|>` is collapsed to one, after checking that its length is what vLLM will expand it
    back to (`audio_token_counts`): a mismatch would make vLLM sample from another prompt than the one
    trained on, so it raises.
    """
    if len(prompt_ids) != len(waves):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(waves)} rows of audio")
    audio_id, bos_id, eos_id = audio_token_ids(processor)
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
        if not keep_markers:
            unexpanded = strip_audio_markers(unexpanded, audio_id, bos_id, eos_id)
        rows.append(_row(unexpanded, clips, sampling_rate))
    return rows


def with_doubled_markers(ids: Sequence[int], audio_id: int, bos_id: int, eos_id: int) -> list[int]:
    """`ids` with one more `<|audio_bos|>` before and `<|audio_eos|>` after each run of `<|AUDIO|>`: what a
    vLLM whose prompt update writes the markers itself makes of a prompt that already has them."""
    out = []
    for i, t in enumerate(ids):
        starts = t == audio_id and (i == 0 or ids[i - 1] != audio_id)
        ends = t == audio_id and (i + 1 == len(ids) or ids[i + 1] != audio_id)
        if starts:
            out.append(bos_id)
        out.append(t)
        if ends:
            out.append(eos_id)
    return out


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
# the engine


def _vllm_generation_kwargs(generation_kwargs: dict | None) -> dict:
    kwargs = dict(generation_kwargs or {})
    banned = kwargs.pop("suppress_tokens", None)
    if banned:
        bias = dict(kwargs.pop("logit_bias", None) or {})
        bias.update({int(t): _LOGIT_BIAS_BAN for t in banned})
        kwargs["logit_bias"] = bias
    return kwargs


class AudioVLLMGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` for audio prompts, in either of TRL's modes.

    colocate: `generate` sends vLLM the unexpanded ids plus each row's clips, and checks that vLLM's expanded
    prompt is the training prompt. server: `generate` is TRL's server branch with the clips rendered by the
    server (`audio_features`) where TRL renders images, placed on the expanded ids (`place_audio_features`).
    `sync_weights` (TRL's: PEFT merge, DeepSpeed/FSDP gathers; the client's NCCL transfer in server mode)
    pushes every tensor under its checkpoint name. Build it with `adopt` from the engine TRL made: the vLLM
    instance (or server client) is kept.
    """

    audio_processor: Any
    keep_markers: bool

    @classmethod
    def adopt(
        cls, engine: VLLMGeneration, processor, *, waves: Callable[[], Sequence[Sequence[np.ndarray]] | None]
    ) -> AudioVLLMGeneration:
        """This engine over `engine`'s vLLM instance or server client. `waves()` returns the clips of the rows
        being generated (per row, in order), as the trainer loaded them."""
        if engine.mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {engine.mode!r}")
        new = cls.__new__(cls)
        new.__dict__.update(vars(engine))
        new.audio_processor = processor
        new._waves = waves
        new._to_checkpoint = checkpoint_name_mapper(engine.model)
        new.generation_kwargs = _vllm_generation_kwargs(engine.generation_kwargs)
        # vLLM's Qwen2-Audio prompt update writes `<|AUDIO|>` x N between the markers already in the prompt;
        # some vLLM versions wrote the markers too. The first generate() finds out (see _check_expansion).
        new.keep_markers = True
        return new

    def _fix_param_name_to_vllm(self, name: str, extra_prefixes: list[str] | None = None) -> str:
        # every sync path of TRL (plain, PEFT merged, DeepSpeed, FSDP1/2) names its tensors through here
        return self._to_checkpoint(super()._fix_param_name_to_vllm(name, extra_prefixes))

    def build_rows(self, prompt_ids: Sequence[Sequence[int]], waves) -> list[dict]:
        return vllm_rows_from_training_ids(
            self.audio_processor, prompt_ids, waves, SAMPLE_RATE, keep_markers=self.keep_markers
        )

    def _sampling_fields(self) -> dict:
        """The sampling settings both modes send (as TRL's generate builds them)."""
        return {
            "repetition_penalty": self.repetition_penalty,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": 0.0 if self.min_p is None else self.min_p,
            "max_tokens": self.max_completion_length,
            "logprobs": self.logprobs,
        }

    def _sampling_params(self, kwargs: dict):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if self.structured_outputs_regex is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(regex=self.structured_outputs_regex)
        elif isinstance(kwargs.get("structured_outputs"), dict):
            kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
        return SamplingParams(**kwargs)

    def generate(self, prompts, images, num_generations, profiler=None, *, waves=None):
        """TRL's `generate` for audio rows: `prompts` are the expanded training ids, `waves` (by default the
        trainer's) each row's clips. Returns TRL's tuple; the prompt ids returned are `prompts`."""
        if images is not None and any(i is not None for i in images):
            raise ValueError("AudioVLLMGeneration does not take images")
        waves = self._waves() if waves is None else waves
        if waves is None or len(waves) != len(prompts):
            raise RuntimeError("vLLM rollout without the batch's audio: the trainer must load it before generating")
        profiler = profiler or nullcontext()
        if self.mode == "server":
            return self._generate_server([list(p) for p in prompts], waves, num_generations, profiler)
        if self.enable_sleep_mode and self._llm_weights_sleeping:
            self.sync_weights()  # level-2 sleep dropped the weights

        prompts = [list(p) for p in prompts]
        local = list(zip(prompts, waves, strict=True))
        if self.tensor_parallel_size > 1:
            gathered = [None] * self.tensor_parallel_size
            torch.distributed.all_gather_object(gathered, local, group=self.tp_group)
            everything = [item for part in gathered for item in part]
        else:
            everything = local
        all_prompts = [p for p, _ in everything]
        all_waves = [w for _, w in everything]

        kwargs = {"n": 1, **self._sampling_fields(), **self.generation_kwargs}
        sampling_params = self._sampling_params(kwargs)
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        if is_peft_model(self.model) and self.tensor_parallel_size > 1:
            torch.distributed.barrier(device_ids=[self.accelerator.local_process_index])  # see TRL's generate

        for _attempt in range(2):
            rows = self.build_rows(all_prompts, all_waves)
            with profiler:
                outputs = self.llm.generate(rows, sampling_params=sampling_params, use_tqdm=False)
            if self._check_expansion(all_prompts, rows, outputs):
                break
        else:  # pragma: no cover - _check_expansion raises before a second switch
            raise RuntimeError("vLLM's audio prompt expansion could not be matched")

        completion_ids = [list(o.token_ids) for out in outputs for o in out.outputs]
        logprobs, logprob_token_ids = extract_logprobs(outputs)
        if self.tensor_parallel_size > 1:
            rank = torch.distributed.get_rank(group=self.tp_group)
            part = slice(rank * len(prompts), (rank + 1) * len(prompts))
            completion_ids = completion_ids[part]
            logprobs = logprobs[part] if logprobs is not None else None
            logprob_token_ids = logprob_token_ids[part] if logprob_token_ids is not None else None
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
            self._llm_weights_sleeping = True
        return prompts, completion_ids, logprobs, logprob_token_ids

    def _generate_server(self, prompts: list[list[int]], waves, num_generations: int, profiler):
        """TRL's server branch of `generate`, with audio where it has images: every process's rows gathered,
        the main process renders each distinct prompt's clips, places the features on its expanded ids and
        asks for `num_generations` completions; the results are broadcast and each process keeps its rows."""
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
                    **self._sampling_fields(),
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

    def _check_expansion(self, expected: list[list[int]], rows: list[dict], outputs) -> bool:
        """True when vLLM's expanded prompts are the training prompts (or it echoed what it was sent).

        When they carry doubled `<|audio_bos|>`/`<|audio_eos|>` markers (a vLLM version whose prompt update
        writes them), switch to sending the placeholders without markers and return False (generate again).
        Anything else raises: vLLM would be sampling from a prompt the policy is not trained on.
        """
        audio_id, bos_id, eos_id = audio_token_ids(self.audio_processor)
        for r, (want, row, out) in enumerate(zip(expected, rows, outputs, strict=True)):
            got = getattr(out, "prompt_token_ids", None)
            if got is None:
                continue
            got = list(got)
            if got == want or got == row["prompt_token_ids"]:
                continue
            if self.keep_markers and got == with_doubled_markers(want, audio_id, bos_id, eos_id):
                logger.warning(
                    "this vLLM writes <|audio_bos|>/<|audio_eos|> around the audio placeholders itself: "
                    "sending the placeholders without them from now on"
                )
                self.keep_markers = False
                return False
            pos = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise RuntimeError(
                f"vLLM expanded row {r}'s audio placeholders into a {len(got)}-token prompt that differs from "
                f"the {len(want)}-token training prompt from position {pos} on "
                f"(vLLM: {got[max(0, pos - 3) : pos + 3]}, training: {want[max(0, pos - 3) : pos + 3]})"
            )
        return True
