"""The audio prompt: the training prompt text and the row checks that hold prompts to the model's limits."""

from __future__ import annotations

import logging

import yaml

from audiothink import CONFIG_DIR
from audiothink.loading import model_context
from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink")


def training_prompt() -> str:
    """The ``prompt`` of configs/train.yaml: the one place the prompt text is written (evaluation, SFT and the
    toy's warm start read it here)."""
    return yaml.safe_load((CONFIG_DIR / "train.yaml").read_text(encoding="utf-8"))["prompt"]


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


def row_checks(processor, prompt: str, *, max_prompt_tokens: int | None, max_audio_seconds: float | None,
               model_config=None, max_completion_length: int | None = None):
    """The model's row checks (:class:`audiothink.data.RowChecks`), from its processor and config.json.

    The audio-token count of a clip follows the processor's own rule (:func:`audiothink.audio.clip_audio_tokens`);
    ``tests/test_short_clips.py`` checks it against the processor and a real forward pass at the boundary. The
    shortest clip the model can use is ``min_audio_samples`` (:func:`shortest_clip`: by ``model_config.model_type``,
    Qwen2-Audio needs two audio tokens a clip). Prompts are held to :func:`prompt_limit` (the model's context less the
    completion length, when ``model_config`` is given).
    """
    from audiothink.audio import SAMPLE_RATE, clip_audio_tokens, shortest_clip
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

