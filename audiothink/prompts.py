"""The audio prompt: the one builder of what the model is asked, and the row checks that hold it to its limits.

Every place that puts a question to the model builds it here (:class:`AudioPrompt`): training's rollouts
(``AudioGRPOTrainer._tokenize_prompts``), evaluation and the held-out summary (``audiothink.inference``, the
benchmarks runner), supervised fine-tuning and the toy's warm start (``audiothink.sft.encode_replies``), the row
checks' prompt length (:func:`row_checks`), and the vLLM rows (:meth:`AudioPrompt.ids`, one placeholder a clip).
So the ids training rolls out from are the ids evaluation generates from (``tests/test_prompts.py``).

One prompt is: a user turn holding one audio part per clip, then the rendered question text
(``audiothink.data.render_prompt``); the chat template (with ``chat_template_kwargs``, TRL's
``GRPOConfig.chat_template_kwargs``, as template variables) and its generation prompt; then the forced mode's
prefill (``audiothink.formats.force_prefill``: ``<think>`` / ``<answer>``, or nothing). The processor expands each
clip's one ``<|AUDIO|>`` to its audio tokens and computes the clips' features. A file longer than the model's audio
window is the clips ``data.long_audio`` makes of it (:class:`audiothink.audio.AudioWindow`: under chunk, each
window-long piece its own audio part), the same for every caller.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from audiothink import CONFIG_DIR
from audiothink.loading import model_context
from audiothink.plumbing.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("audiothink")


def training_prompt() -> str:
    """The ``prompt`` of configs/train.yaml: the one place the prompt text is written (evaluation, SFT and the
    toy's warm start read it here)."""
    return yaml.safe_load((CONFIG_DIR / "train.yaml").read_text(encoding="utf-8"))["prompt"]


# The audio markers of a processor (attribute names): ``<|AUDIO|>`` (one a clip in the rendered text, expanded
# to the clip's audio tokens by the processor) and the ``<|audio_bos|>`` / ``<|audio_eos|>`` around it.
AUDIO_MARKERS = ("audio_token", "audio_bos_token", "audio_eos_token")

# TRL GRPOTrainer arguments (and config keys) that would take the prompt off the audio path, each with the reason it is
# refused (audiothink.plumbing.validate and cli for the config, AudioGRPOTrainer for Python arguments). TRL 1.16
# re-tokenizes a tool-calling prompt with the tokenizer between turns, and hands a rollout_func the raw prompt
# text: either way the model would be asked without its clips.
BYPASSES_AUDIO_PATH = {
    "tools": "the audio prompt renders no tool schemas, and TRL's tool loop re-tokenizes each prompt without its "
             "clips; audiothink does not support tool calling",
    "environment_factory": "TRL's environments are tool calling (their methods become tools), whose loop "
                           "re-tokenizes each prompt without its clips; audiothink does not support them",
    "rollout_func": "TRL hands a rollout_func the raw prompt text, so it would generate without the clips (and "
                    "without the forced-mode prefill and chat_template_kwargs); audiothink does not support it",
}


def config_chat_template_kwargs(cfg) -> dict[str, Any]:
    """``trainer.chat_template_kwargs`` of a composed config (train, evaluate, sft) as a plain dict; ``{}`` unset.

    Evaluation and SFT read the trainer group's value too, so that they render the prompt training renders.
    """
    from omegaconf import OmegaConf

    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    value = trainer.get("chat_template_kwargs") if trainer is not None else None
    if value is None:
        return {}
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if not isinstance(value, Mapping):
        raise ConfigError(f"trainer.chat_template_kwargs={value!r}: must be a mapping of chat-template variables "
                          "({name: value, ...}) or null")
    return dict(value)


def config_long_audio(cfg) -> str:
    """``data.long_audio`` of a composed config (train, sft, evaluate: each has it), ``truncate`` when absent (a
    config written before the setting existed): what a clip longer than the model's window becomes, for every
    side that builds a prompt (:class:`audiothink.audio.AudioWindow`)."""
    data = cfg.get("data") if hasattr(cfg, "get") else None
    value = data.get("long_audio") if data is not None else None
    return "truncate" if value is None else value


def marker_tokens(processor) -> list[str]:
    """The processor's audio marker tokens (``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>``), those it has."""
    return [t for t in (getattr(processor, name, None) for name in AUDIO_MARKERS) if t]


def marker_ids(processor) -> list[int]:
    """The ids of :func:`marker_tokens`, sorted: never to be generated (no audio features stand behind them), so
    training's rollouts and evaluation both suppress them."""
    tok = processor.tokenizer
    return sorted({tok.convert_tokens_to_ids(t) for t in marker_tokens(processor)})


def audio_token_ids(processor) -> tuple[int, int, int]:
    """(``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>``) ids, in that order (the vLLM rows need each by role)."""
    tok = processor.tokenizer
    return tuple(tok.convert_tokens_to_ids(getattr(processor, name)) for name in AUDIO_MARKERS)


def check_chat_template_kwargs(processor, kwargs: Mapping[str, Any]) -> None:
    """Refuse ``chat_template_kwargs`` that cannot change the prompt as meant (:class:`ConfigError`, one line).

    A key the builder sets itself (``add_generation_prompt``, ``tokenize``, ``tools``, ...: the parameters of
    ``apply_chat_template``) is refused; so is a key that is not a variable of the processor's chat template
    (transformers would pass it to the processor, where a rendered-text call ignores it: the prompt would not change
    and nothing would say so).
    """
    if not kwargs:
        return
    own = sorted(set(kwargs) & set(inspect.signature(processor.apply_chat_template).parameters) - {"kwargs"})
    if own:
        raise ConfigError(f"chat_template_kwargs: {own} are set by the audio prompt itself (audiothink/prompts.py), "
                          "not template variables")
    template = getattr(processor, "chat_template", None)
    if not isinstance(template, str):
        return  # no single template to read (a dict of named ones): transformers resolves it
    try:
        from transformers.utils.chat_template_utils import _get_template_variables
    except ImportError:  # a transformers without it: the variables cannot be listed, the kwargs pass as given
        return
    variables = _get_template_variables(template)
    unread = sorted(set(kwargs) - variables)
    if unread:
        readable = sorted(variables - {"messages", "add_generation_prompt"})
        raise ConfigError(f"chat_template_kwargs: {unread} are not variables of the model's chat template, so they "
                          f"would not change the prompt (it reads: {', '.join(readable) or 'none besides messages'})")


class AudioPrompt:
    """The audio prompt of a run: one builder for training, evaluation, SFT, the row checks and the vLLM rows.

    ``prefill``: text put after the generation prompt, the start of the reply (``force_prefill(mode)``; ``""``: the
    model chooses). ``chat_template_kwargs``: extra chat-template variables (TRL's GRPOConfig field; checked by
    :func:`check_chat_template_kwargs`, a :class:`ConfigError` for keys that would not change the prompt).

    Inputs are per prompt: ``texts[i]`` the rendered user text (:func:`audiothink.data.render_prompt`), with
    ``clip_counts[i]`` clips (or ``waves[i]``, the clips as float32 arrays at 16 kHz).
    """

    def __init__(self, processor, *, prefill: str = "", chat_template_kwargs: Mapping[str, Any] | None = None):
        self.processor = processor
        self.prefill = prefill
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        check_chat_template_kwargs(processor, self.chat_template_kwargs)

    @staticmethod
    def messages(text: str, clips: int) -> list[dict]:
        """The chat of one prompt: a user turn, one audio part per clip, then the text."""
        return [{"role": "user", "content": [{"type": "audio"}] * clips + [{"type": "text", "text": text}]}]

    def render(self, texts: Sequence[str], clip_counts: Sequence[int]) -> list[str]:
        """The prompt strings: each chat through the chat template, generation prompt added, then the prefill.
        One ``<|AUDIO|>`` a clip (the processor expands them)."""
        chats = [self.messages(t, n) for t, n in zip(texts, clip_counts, strict=True)]
        if not chats:
            return []
        rendered = self.processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True,
                                                      **self.chat_template_kwargs)
        return [r + self.prefill for r in rendered]

    def encode(self, texts: Sequence[str], waves: Sequence[Sequence[np.ndarray]]):
        """The processor's tensors (``input_ids`` and ``attention_mask`` ``[prompts, longest]``, padded on the
        tokenizer's side; the clips' features, one row a clip in order): each ``<|AUDIO|>`` expanded to its clip's
        audio tokens. What training rolls out from and evaluation generates from."""
        from audiothink.audio import SAMPLE_RATE

        rendered = self.render(texts, [len(clips) for clips in waves])
        flat = [w for clips in waves for w in clips]
        return self.processor(text=rendered, audio=flat, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                              padding=True)

    def ids(self, texts: Sequence[str], clip_counts: Sequence[int]) -> list[list[int]]:
        """The prompts' token ids before the processor's expansion: one ``<|AUDIO|>`` a clip, between its
        ``<|audio_bos|>`` / ``<|audio_eos|>`` as the template writes them (what vLLM takes, with the clips; each
        run of ``<|AUDIO|>`` in :meth:`encode`'s ids collapsed to one gives the same ids)."""
        tok = self.processor.tokenizer
        # verbose=False: no "longer than the maximum" warning; the row checks hold prompts to the limit
        return [list(tok(t, verbose=False)["input_ids"]) for t in self.render(texts, clip_counts)]

    def text_tokens(self, text: str, clips: int) -> int:
        """Tokens of one prompt besides its audio tokens (the row checks add each clip's, by the processor's rule:
        :func:`audiothink.audio.clip_audio_tokens`)."""
        return len(self.ids([text], [clips])[0]) - clips


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
               model_config=None, max_completion_length: int | None = None, prefill: str = "",
               chat_template_kwargs: Mapping[str, Any] | None = None, long_audio: str = "truncate"):
    """The model's row checks (:class:`audiothink.data.RowChecks`), from its processor and config.json.

    The audio-token count of a clip follows the processor's own rule (:func:`audiothink.audio.clip_audio_tokens`);
    ``tests/test_audio_short_clips.py`` checks it against the processor and a real forward pass at the boundary. The
    shortest clip the model can use is ``min_audio_samples`` (:func:`shortest_clip`: by ``model_config.model_type``,
    Qwen2-Audio needs two audio tokens a clip). Prompts are held to :func:`prompt_limit` (the model's context less the
    completion length, when ``model_config`` is given), counted as :class:`AudioPrompt` builds them (``prefill`` and
    ``chat_template_kwargs`` as training's). A clip longer than the model's window counts as the clips
    ``long_audio`` makes of it (:class:`audiothink.audio.AudioWindow`, the rollouts' rule), and under ``error`` is
    a row problem naming the file.
    """
    from audiothink.audio import SAMPLE_RATE, AudioWindow, clip_audio_tokens
    from audiothink.data import RowChecks, render_prompt

    tok = processor.tokenizer
    fe = processor.feature_extractor
    model_type = getattr(model_config, "model_type", None)
    audio_window = AudioWindow.of(fe, model_type, max_audio_seconds, long_audio)
    window, min_samples = audio_window.samples, audio_window.min_samples
    limit, limit_text = prompt_limit(max_prompt_tokens, model_config, max_completion_length)
    if limit != max_prompt_tokens:
        log.info("data: prompts are held to %s", limit_text)
    control = tuple(sorted({t for t in [*tok.all_special_tokens, *marker_tokens(processor)] if t and len(t) > 1}))
    builder = AudioPrompt(processor, prefill=prefill, chat_template_kwargs=chat_template_kwargs)

    def prompt_tokens(sample, durations) -> int:
        pieces = [b - a for d in durations for a, b in audio_window.pieces(int(round(d * SAMPLE_RATE)))]
        return builder.text_tokens(render_prompt(sample, prompt), len(pieces)) + sum(
            clip_audio_tokens(n, hop_length=fe.hop_length, window=window, model_type=model_type) for n in pieces)

    return RowChecks(min_audio_samples=min_samples, control_tokens=control, prompt_tokens=prompt_tokens,
                     max_prompt_tokens=limit, model_type=model_type, prompt_limit=limit_text, window=audio_window)
