"""The hf judge: a local causal LM (e.g. Qwen3-8B-Base) run in-process, batched, greedy.

Prompts are sent as plain text (a base model continues them); ``chat_template=True`` wraps each in the
tokenizer's chat template for instruction-tuned judges. Two rewards that use the same checkpoint on the
same device share one loaded copy. Generation errors (out of memory, ...) give ``None`` for that batch,
counted as failures: a judge never stops training.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from audiothink.judge.base import Judge, Prompt, unparsable

log = logging.getLogger("audiothink.judge")


@functools.lru_cache(maxsize=4)
def _load(path: str, dtype: str, device: str, attn_implementation: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class HFJudge(Judge):
    """A transformers causal LM as judge.

    Args:
        path: checkpoint directory or hub id.
        prompts: ``{name: {template, labels|scale, version}}`` (``configs/judge/prompts/``).
        device: where the judge runs (``cuda:1`` to keep it off the policy's GPU); None = ``cuda`` when
            available, else ``cpu``.
        dtype: weights' dtype (``bfloat16``, ``float32``, ...).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: reply length; the score must be on the reply's first line, so a few suffice.
        chat_template: wrap each prompt in the tokenizer's chat template (instruction-tuned judges).
        on_probe_failure, max_failure_share, failure_window: as for :class:`~audiothink.judge.OpenAIJudge`;
            the probe here is one ``generate`` per task (the model is loaded already, in the constructor).
    """

    def __init__(
        self,
        path: str,
        prompts: Mapping[str, Any] | None = None,
        device: str | None = None,
        dtype: str = "bfloat16",
        batch_size: int = 16,
        max_new_tokens: int = 8,
        chat_template: bool = False,
        attn_implementation: str | None = None,
        on_probe_failure: str = "stop",
        max_failure_share: float = 0.5,
        failure_window: int = 10,
    ):
        import torch

        from audiothink.plumbing.errors import ConfigError
        from audiothink.loading import check_model_path

        super().__init__(prompts, on_probe_failure=on_probe_failure, max_failure_share=max_failure_share,
                         failure_window=failure_window)
        try:
            check_model_path(path)  # a missing directory fails at start-up, not at the first judged step
        except ConfigError as e:
            raise ConfigError(str(e).replace("model.path", "judge.path", 1)) from None
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("judge: batch_size and max_new_tokens must be >= 1")
        self.path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.chat_template = chat_template
        self.model, self.tokenizer = _load(path, dtype, self.device, attn_implementation)
        self.batches = 0  # generate() calls made, for tests and profiling

    def __repr__(self) -> str:
        return f"HFJudge(path={self.path!r}, device={self.device!r}, batch_size={self.batch_size})"

    @property
    def where(self) -> str:
        return f"judge.path={self.path} (on {self.device})"

    def probe(self, task: str | Prompt) -> str | None:
        """One greedy reply for ``task``; None when it parses (a base model with chat_template=true, or the
        reverse, often answers something else)."""
        prompt, text = self.probe_text(task)
        try:
            reply = self.generate([text])[0]
        except Exception as e:  # noqa: BLE001 - out of memory, a broken checkpoint, ...
            return f"generate failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        return unparsable(prompt, reply)

    async def _score(self, task: str | Prompt, items: list[Mapping[str, Any]]) -> tuple[list[float | None], int]:
        prompt = self.prompt(task)
        texts = [prompt.render(item) for item in items]
        unique = list(dict.fromkeys(texts))  # G samples of one prompt often say the same thing
        replies: dict[str, str | None] = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            try:
                outs = self.generate(chunk)
            except Exception as e:  # noqa: BLE001 - OOM, bad checkpoint, ...: these samples get None
                log.warning("hf judge: generate failed for %d prompts (%s: %s)", len(chunk), type(e).__name__, e)
                outs = [None] * len(chunk)
            replies.update(zip(chunk, outs))
        scores = [prompt.parse(replies[t]) for t in texts]
        failed = sum(s is None for s in scores)
        if failed:
            bad = next(replies[t] for t, s in zip(texts, scores) if s is None)
            log.warning("hf judge %r: %d of %d samples without a score (e.g. reply %r)",
                        prompt.name, failed, len(texts), (bad or "")[:80])
        return scores, failed

    def generate(self, texts: list[str]) -> list[str]:
        """Greedy continuations of ``texts`` (one batch), decoded without special tokens."""
        import torch

        if self.chat_template:
            texts = [
                self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True)
                for t in texts
            ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                do_sample=False,  # temperature 0: the same reasoning gets the same score
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        self.batches += 1
        new = out[:, enc["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)
