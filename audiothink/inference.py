"""Batched greedy answering and held-out scoring, shared by training summaries and benchmarks.

The prompt is training's, built by the same builder (:class:`audiothink.prompts.AudioPrompt`: the template, the
chat rendering with ``chat_template_kwargs``, one audio part per clip, the prefill), so a before/after comparison
measures the policy, not a prompt mismatch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from audiothink.audio import AudioWindow
from audiothink.data import Sample, render_prompt
from audiothink.formats import parse
from audiothink.prompts import AudioPrompt, marker_ids
from audiothink.scoring import is_correct


def banned_audio_token_ids(processor) -> list[int]:
    """Audio placeholder/marker ids: never to be generated (they have no features behind them); training's
    list (:func:`audiothink.prompts.marker_ids`)."""
    return marker_ids(processor)


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: the very list TRL's GRPOTrainer rollouts stop on (trl 1.16,
    ``GRPOTrainer.__init__``: ``eos_token_ids``), so evaluation and the held-out summary stop where
    training stops.

    Every eos id of the model's ``generation_config`` (Qwen checkpoints list ``<|endoftext|>`` and
    ``<|im_end|>``), with the tokenizer's eos first when it is not among them. Passing only
    ``tokenizer.eos_token_id`` to ``generate`` would override the checkpoint's list: a model that ends its
    turn with ``<|im_end|>`` while its tokenizer's eos is ``<|endoftext|>`` would run every answer to
    ``max_new_tokens``.
    """
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    if ids is None:
        ids = []
    elif isinstance(ids, int):
        ids = [ids]
    else:
        ids = [int(i) for i in ids]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id, *ids]
    return ids


# (wave, sample, clip index) -> the wave the model hears instead; e.g. the listening check's noise
AudioTransform = Callable[[np.ndarray, Sample, int], np.ndarray]


def build_inputs(
    processor,
    samples: Sequence[Sample],
    template: str,
    max_audio_seconds: float | None,
    audio_transform: AudioTransform | None = None,
    prefill: str = "",
    chat_template_kwargs: Mapping | None = None,
    *,
    long_audio: str = "truncate",
    model_type: str | None = None,
):
    """The processor's tensors for ``samples``: chat-rendered prompts (plus ``prefill`` after the generation
    prompt, the start of the assistant's reply) and the clips' features. A clip longer than the model's window
    is what ``long_audio`` makes it (:class:`audiothink.audio.AudioWindow`, training's rule: under chunk, its
    consecutive window-long pieces, each its own audio part); ``model_type``: the checkpoint's, which decides the
    shortest piece."""
    return encode_prompts(processor, load_waves(processor, samples, max_audio_seconds, audio_transform,
                                                long_audio=long_audio, model_type=model_type),
                          [render_prompt(s, template) for s in samples], prefill, chat_template_kwargs)


def load_waves(processor, samples: Sequence[Sample], max_audio_seconds: float | None,
               audio_transform: AudioTransform | None = None, *, long_audio: str = "truncate",
               model_type: str | None = None) -> list[list[np.ndarray]]:
    """Per sample, the clips the model is given (float32, 16 kHz): each of its files as
    :meth:`audiothink.audio.AudioWindow.load` gives it, pieces in order, then ``audio_transform`` (its clip index
    counts the pieces)."""
    window = AudioWindow.of(processor.feature_extractor, model_type, max_audio_seconds, long_audio)
    waves = []
    for s in samples:
        clips = [w for p in s.audio for w in window.load(p, row_id=s.id)[0]]
        if audio_transform is not None:
            clips = [audio_transform(w, s, k) for k, w in enumerate(clips)]
        waves.append(clips)
    return waves


def encode_prompts(processor, waves: Sequence[Sequence[np.ndarray]], prompts: Sequence[str], prefill: str = "",
                   chat_template_kwargs: Mapping | None = None):
    """The processor's tensors for user ``prompts`` (rendered texts) with their clips (``waves[i]``: the clips of
    prompt ``i``): :meth:`audiothink.prompts.AudioPrompt.encode`, training's builder (one audio part per clip, then
    the text, the chat template's generation prompt, ``prefill``)."""
    return AudioPrompt(processor, prefill=prefill, chat_template_kwargs=chat_template_kwargs).encode(prompts, waves)


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: Sequence[Sample],
    template: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    max_audio_seconds: float | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    prefill: str = "",
    chat_template_kwargs: Mapping | None = None,
    long_audio: str = "truncate",
) -> list[str]:
    """Decode one completion per sample (greedy by default), special tokens removed; ``prefill`` (e.g.
    :func:`audiothink.formats.force_prefill`) starts each reply and is part of the returned completion;
    ``chat_template_kwargs``: training's (``trainer.chat_template_kwargs``); ``long_audio``: training's
    (``data.long_audio``)."""
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            outputs.extend(
                generate_batch(
                    model,
                    processor,
                    batch,
                    template,
                    max_new_tokens=max_new_tokens,
                    max_audio_seconds=max_audio_seconds,
                    do_sample=do_sample,
                    temperature=temperature,
                    prefill=prefill,
                    chat_template_kwargs=chat_template_kwargs,
                    long_audio=long_audio,
                ).texts
            )
    finally:
        model.train(was_training)
    return outputs


@dataclass
class GeneratedBatch:
    """One generate() call: decoded completions plus what a teacher-forced pass over them needs."""

    texts: list[str]  # decoded completions, special tokens removed, each starting with the prefill (if any)
    inputs: dict  # the processor's tensors (prompt ids + prefill, masks, audio features) on the model's device
    completion_ids: torch.Tensor  # [batch, new tokens]; padded after the first stop token
    completion_mask: torch.Tensor  # [batch, new tokens]; 1 up to and including the first stop token
    stop_ids: tuple[int, ...] = ()  # the ids that ended a completion (stop_token_ids)
    # tokens of the text put after the prompt and generated from (part of `texts`, not of completion_ids)
    prefill_tokens: int = 0
    # per row, the clips it was given (more than its files when data.long_audio=chunk split one): the rows of
    # inputs' per-clip features (input_features, feature_attention_mask)
    clip_counts: tuple[int, ...] = ()

    @property
    def output_lengths(self) -> list[int]:
        """Per completion: its tokens up to and including the stop token, a forced mode's prefill included (the
        prefill is part of the completion, so its tokens count as output tokens)."""
        return (self.completion_mask.sum(1) + self.prefill_tokens).tolist()

    @property
    def ended(self) -> list[bool]:
        """Per completion: whether it ended with a stop token (False: cut at max_new_tokens)."""
        stops = torch.tensor(list(self.stop_ids), dtype=self.completion_ids.dtype, device=self.completion_ids.device)
        return torch.isin(self.completion_ids, stops).any(1).tolist()


@torch.no_grad()
def generate_batch(
    model,
    processor,
    samples: Sequence[Sample],
    template: str,
    *,
    max_new_tokens: int = 64,
    max_audio_seconds: float | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    audio_transform: AudioTransform | None = None,
    prefill: str = "",
    chat_template_kwargs: Mapping | None = None,
    long_audio: str = "truncate",
) -> GeneratedBatch:
    """One batched generate() call on ``samples`` (the caller puts the model in eval mode).

    ``prefill``: text that starts the assistant's reply (``<think>`` or ``<answer>`` to force a mode, see
    :func:`audiothink.formats.force_prefill`); the model continues it, and each returned text is the prefill plus the
    continuation, so it is parsed and scored like a completion the model wrote whole. ``chat_template_kwargs``:
    extra chat-template variables, training's (:class:`audiothink.prompts.AudioPrompt`). ``long_audio``: what a
    clip longer than the model's window becomes (``data.long_audio``; :class:`audiothink.audio.AudioWindow`).
    """
    tok = processor.tokenizer
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    waves = load_waves(processor, samples, max_audio_seconds, audio_transform, long_audio=long_audio,
                       model_type=model_type)
    enc = encode_prompts(processor, waves, [render_prompt(s, template) for s in samples], prefill,
                         chat_template_kwargs)
    enc = {k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else v.dtype) for k, v in enc.items()}
    stops = stop_token_ids(model, tok)  # training's stop ids, not only the tokenizer's eos
    gen = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=None,
        top_k=None,
        suppress_tokens=banned_audio_token_ids(processor),
        pad_token_id=tok.pad_token_id,
        eos_token_id=stops or None,
    )
    new = gen[:, enc["input_ids"].size(1) :]
    is_eos = torch.isin(new, torch.tensor(stops, dtype=new.dtype, device=new.device))
    # positions after the first stop token are padding
    mask = (is_eos.cumsum(dim=1) - is_eos.long()) == 0
    return GeneratedBatch(
        texts=[prefill + t for t in tok.batch_decode(new, skip_special_tokens=True)],
        inputs=enc,
        completion_ids=new,
        completion_mask=mask.long(),
        stop_ids=tuple(stops),
        prefill_tokens=len(tok(prefill, add_special_tokens=False)["input_ids"]) if prefill else 0,
        clip_counts=tuple(len(clips) for clips in waves),
    )


def score(samples: Sequence[Sample], outputs: Sequence[str]) -> dict:
    """Accuracy, think rate and format-failure rate, overall and by difficulty and task."""

    def summarise(idx: list[int]) -> dict:
        n = len(idx)
        parsed = [parse(outputs[i]) for i in idx]
        correct = [bool(is_correct(outputs[i], samples[i].answer, samples[i].choices)) for i in idx]
        think_idx = [j for j, p in enumerate(parsed) if p.thinks]
        return {
            "n": n,
            "accuracy": sum(correct) / n if n else 0.0,
            "think_rate": len(think_idx) / n if n else 0.0,
            "accuracy_think": (sum(correct[j] for j in think_idx) / len(think_idx)) if think_idx else None,
            "format_failure_rate": sum(not p.well_formed for p in parsed) / n if n else 0.0,
        }

    by: dict[str, dict[str, list[int]]] = {"difficulty": defaultdict(list), "task": defaultdict(list)}
    for i, s in enumerate(samples):
        by["difficulty"][s.difficulty or "unknown"].append(i)
        by["task"][s.task or "unknown"].append(i)
    return {
        "overall": summarise(list(range(len(samples)))),
        **{f"by_{key}": {k: summarise(v) for k, v in sorted(groups.items())} for key, groups in by.items()},
    }
