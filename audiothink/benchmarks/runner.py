"""Batched, resumable answering of a benchmark: one record per item, appended as soon as it is made.

Items are answered in a fixed order (longest audio first, so an out-of-memory batch shows up at once)
and in fixed batches of that order, so a rerun after a crash rebuilds the very batches it did not finish.
A batch that raises is retried item by item; an item that still fails gets an empty prediction and its
error in the record (it counts as wrong, as the official scripts count a missing prediction) and is
retried on the next run. ``KeyboardInterrupt`` and kills stop the run: every finished batch is on disk.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from audiothink.benchmarks.base import Benchmark
from audiothink.benchmarks.store import PredictionStore
from audiothink.data import Sample
from audiothink.formats import extract_answer, parse
from audiothink.formats import force_prefill
from audiothink.inference import AudioTransform, GeneratedBatch, generate_batch

__all__ = ["GenerationSettings", "RunStats", "EvaluationAborted", "predict", "answer_items", "make_record",
           "replace_audio", "completion_kl", "teacher_forced_logprobs"]

log = logging.getLogger("audiothink.evaluate")


class EvaluationAborted(RuntimeError):
    """More items failed than ``max_failures``: something systematic is wrong (the message says what)."""


@dataclass(frozen=True)
class GenerationSettings:
    batch_size: int = 16
    max_new_tokens: int = 512
    max_audio_seconds: float | None = None
    do_sample: bool = False
    temperature: float = 1.0
    # null: the model chooses its mode; think / direct: the reply is prefilled with <think> / <answer>
    force_mode: str | None = None
    # extra chat-template variables, training's trainer.chat_template_kwargs (audiothink.prompts.AudioPrompt)
    chat_template_kwargs: dict | None = None
    # what a clip longer than the model's window becomes: chunk, truncate or error (data.long_audio,
    # audiothink.audio.AudioWindow)
    long_audio: str = "truncate"


@dataclass
class RunStats:
    predicted: int = 0  # items answered by the model in this run
    skipped: int = 0  # items already finished by an earlier run
    failed: int = 0  # items that got an empty prediction because of an error (unusable audio included)
    model_calls: int = 0  # generate() calls
    seconds: float = 0.0
    first_error: str | None = None


# --------------------------------------------------------------------------- records


def make_record(key: str, sample: Sample, output: str, tokenizer, *, output_tokens: int = 0,
                truncated: bool = False, error: str | None = None, kl: tuple[float, int] | None = None) -> dict:
    """What the predictions file keeps for one item (the score is computed later, from the metadata)."""
    parsed = parse(output)
    think = parsed.think if parsed.thinks else None
    think_tokens = len(tokenizer(think, add_special_tokens=False)["input_ids"]) if think else 0
    rec = {
        "key": key,
        "id": sample.id,
        "prediction": extract_answer(output) if not error else "",
        "output": output,
        "mode": parsed.mode,
        "thinks": parsed.thinks,
        "think": think,
        "think_tokens": think_tokens,
        "output_tokens": output_tokens,
        "truncated": truncated,
        "error": error,
    }
    if kl is not None:
        rec["kl_sum"], rec["kl_tokens"] = float(kl[0]), int(kl[1])
    return rec


# --------------------------------------------------------------------------- listening check


def replace_audio(kind: str, seed: int = 0) -> AudioTransform:
    """The listening check's replacement: same length as the clip the model would hear.

    ``noise``: white Gaussian noise at the clip's own RMS level (0.05 for a silent clip), a fixed stream
    per item id and clip, so reruns hear the same noise; ``silence``: zeros.
    """
    if kind == "silence":
        return lambda wave, sample, k: np.zeros_like(wave, dtype=np.float32)
    if kind != "noise":
        raise ValueError(f"listen_check must be 'noise' or 'silence', got {kind!r}")

    def noise(wave: np.ndarray, sample: Sample, k: int) -> np.ndarray:
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
        level = rms if rms > 1e-4 else 0.05
        rng = np.random.default_rng([seed, zlib.crc32(f"{sample.id}\x00{k}".encode())])
        return np.clip(rng.standard_normal(wave.shape[0]) * level, -1.0, 1.0).astype(np.float32)

    return noise


# --------------------------------------------------------------------------- forgetting monitor


@torch.no_grad()
def teacher_forced_logprobs(model, batch: GeneratedBatch, clips_per_sample: Sequence[int], start: int, end: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (float32, ``[rows, new tokens, vocab]``) the model gives each completion token of
    rows ``start:end``, with the prompt, audio and positions generate() used; and the completion mask."""
    inputs = batch.inputs
    clip_start = np.concatenate([[0], np.cumsum(clips_per_sample)]).astype(int)
    per_clip = {"input_features", "feature_attention_mask"}  # one row per clip, not per item
    part = {k: (v[clip_start[start]:clip_start[end]] if k in per_clip else v[start:end]) for k, v in inputs.items()}
    comp, cmask = batch.completion_ids[start:end], batch.completion_mask[start:end]
    ids = torch.cat([part.pop("input_ids"), comp], dim=1)
    attn = torch.cat([part.pop("attention_mask"), cmask.to(inputs["attention_mask"].dtype)], dim=1)
    pos = (attn.long().cumsum(-1) - 1).masked_fill(attn == 0, 0)  # as generate() derives them
    t = comp.size(1)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, **part).logits
    return logits[:, -t - 1 : -1].float().log_softmax(-1), cmask


@torch.no_grad()
def completion_kl(model, batch: GeneratedBatch, clips_per_sample: Sequence[int], micro_batch: int = 4
                  ) -> list[tuple[float, int]]:
    """Per item ``(sum of per-token KL(tuned ‖ base), completion tokens)``, teacher-forced on the tuned
    model's own completions.

    ``model`` is a PEFT model: the base distribution is the same forward with the adapter disabled. Both
    passes use the positions generate() used (from the attention mask), so the tuned pass reproduces the
    distributions greedy decoding picked from. The KL is summed over completion tokens up to and
    including the first stop token (training's stop ids), in float32.
    """
    n = batch.completion_ids.size(0)
    out: list[tuple[float, int]] = []
    for s in range(0, n, micro_batch):
        e = min(n, s + micro_batch)
        tuned, cmask = teacher_forced_logprobs(model, batch, clips_per_sample, s, e)
        with model.disable_adapter():
            base, _ = teacher_forced_logprobs(model, batch, clips_per_sample, s, e)
        kl = (tuned.exp() * (tuned - base)).sum(-1) * cmask
        out.extend(zip(kl.sum(1).tolist(), cmask.sum(1).tolist()))
    return out


# --------------------------------------------------------------------------- the loop


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def predict(
    model,
    processor,
    bench: Benchmark,
    template: str,
    store: PredictionStore,
    settings: GenerationSettings,
    *,
    order: Sequence[int] | None = None,
    audio_transform: AudioTransform | None = None,
    kl: bool = False,
    kl_micro_batch: int = 4,
    unreadable: dict[int, str] | None = None,
    max_failures: int = 20,
    retry_failed: bool = True,
    progress: bool = True,
    desc: str = "predict",
) -> RunStats:
    """Answer every item of ``bench`` that ``store`` has no finished record for; append records per batch."""
    from tqdm.auto import tqdm

    tok = processor.tokenizer
    order = list(range(len(bench))) if order is None else list(order)
    unreadable = unreadable or {}
    unreadable_keys = {bench.keys[i] for i in unreadable}
    generation_failures = 0
    stats = RunStats()
    todo_total = sum(not store.done(bench.keys[i], retry_failed=retry_failed) for i in order)
    stats.skipped = len(order) - todo_total
    if todo_total == 0:
        return stats
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    # a bar on a terminal only: redirected to a file, its carriage returns would litter the log (the run's
    # figures and items/s are printed at the end either way)
    bar = tqdm(total=len(order), initial=stats.skipped, unit="item", desc=desc,
               disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True, smoothing=0.1)
    try:
        for chunk in _batches(order, settings.batch_size):
            todo = [i for i in chunk if not store.done(bench.keys[i], retry_failed=retry_failed)]
            if not todo:
                continue
            records = [make_record(bench.keys[i], bench.samples[i], "", tok, error=unreadable[i])
                       for i in todo if i in unreadable]
            todo = [i for i in todo if i not in unreadable]
            if todo:
                records += _answer(model, processor, bench, template, todo, settings, audio_transform, kl,
                                   kl_micro_batch, stats)
            store.append(records)  # on disk before the next batch starts
            for rec in records:
                if rec["error"]:
                    stats.failed += 1
                    if rec["key"] not in unreadable_keys:  # known before the run: not a generation failure
                        generation_failures += 1
                        stats.first_error = stats.first_error or f"id={rec['id']}: {rec['error']}"
                else:
                    stats.predicted += 1
            bar.update(len(records))
            if generation_failures > max_failures:
                raise EvaluationAborted(
                    f"{generation_failures} items failed during generation (eval.max_failures={max_failures}); "
                    f"first: {stats.first_error}"
                )
    finally:
        bar.close()
        model.train(was_training)
        stats.seconds = time.perf_counter() - start
    return stats


def answer_items(model, processor, bench: Benchmark, template: str, indices: Sequence[int],
                 settings: GenerationSettings) -> list[dict]:
    """The records (:func:`make_record`) of items ``indices`` of ``bench``, in that order, made as
    :func:`predict` makes them (batches of ``settings.batch_size``, a failing batch retried item by item, an item
    that still fails recorded with its error) but kept in memory, not in a store: the scoring of a benchmark
    during training (``eval.benchmark``, audiothink/heldout_eval.py), which splits the items between processes."""
    was_training = model.training
    model.eval()
    records: list[dict] = []
    try:
        for chunk in _batches(list(indices), settings.batch_size):
            records += _answer(model, processor, bench, template, chunk, settings, None, False, 1, RunStats())
    finally:
        model.train(was_training)
    return records


def _answer(model, processor, bench, template, idx, settings, audio_transform, kl, kl_micro_batch, stats
            ) -> list[dict]:
    """Records for items ``idx``: one batched call; on an exception, one call per item."""
    try:
        return _generate_records(model, processor, bench, template, idx, settings, audio_transform, kl,
                                 kl_micro_batch, stats)
    except Exception as exc:  # noqa: BLE001 — retried item by item below; errors end up in the records
        if len(idx) == 1:
            return [make_record(bench.keys[idx[0]], bench.samples[idx[0]], "", processor.tokenizer,
                                error=f"{type(exc).__name__}: {exc}")]
        log.warning("batch of %d failed (%s: %s); retrying item by item", len(idx), type(exc).__name__, exc)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out = []
    for i in idx:
        out += _answer(model, processor, bench, template, [i], settings, audio_transform, kl, kl_micro_batch,
                       stats)
    return out


def _generate_records(model, processor, bench, template, idx, settings, audio_transform, kl, kl_micro_batch,
                      stats) -> list[dict]:
    samples = [bench.samples[i] for i in idx]
    stats.model_calls += 1
    prefill = force_prefill(settings.force_mode)
    batch = generate_batch(
        model, processor, samples, template,
        max_new_tokens=settings.max_new_tokens, max_audio_seconds=settings.max_audio_seconds,
        do_sample=settings.do_sample, temperature=settings.temperature, audio_transform=audio_transform,
        prefill=prefill, chat_template_kwargs=settings.chat_template_kwargs, long_audio=settings.long_audio,
    )
    # per row its clips as given to the model (a chunked file is several)
    kls = completion_kl(model, batch, batch.clip_counts, kl_micro_batch) if kl else None
    lengths = batch.output_lengths  # a forced mode's prefill counts: it is part of the completion
    ended = batch.ended  # any of training's stop ids, not only the tokenizer's eos
    return [
        make_record(bench.keys[i], bench.samples[i], text, processor.tokenizer, output_tokens=int(n),
                    truncated=not e, kl=None if kls is None else kls[j])
        for j, (i, text, n, e) in enumerate(zip(idx, batch.texts, lengths, ended))
    ]
