"""AudioGRPOTrainer: TRL's GRPOTrainer with the audio in every forward pass.

One job: the batch's audio in every model call TRL makes, plus the one hook TRL's reward loop lacks (rewards
over the whole gathered batch). TRL knows images, not audio: handed a Qwen2-Audio model it would generate
*with* the audio (if the processor ran) but score the completions - policy, old and reference log-probs - on
the text tokens alone, silently training the model on placeholder embeddings. The overrides (signatures
pinned, and the TRL bodies relied on fingerprinted, by tests/test_trainer_signatures.py):

- `_generate_and_score_completions`: loads the batch's audio, runs TRL's generation/scoring with it, and
  attaches the per-row audio features to the returned batch so they travel through TRL's shuffle/split.
- `_tokenize_prompts`: the prompt of `audiothink.prompts.AudioPrompt` (the builder evaluation uses: one audio
  part per clip, the chat template with `chat_template_kwargs`, the forced mode's prefill), through the
  *processor*, which expands each `<|AUDIO|>` to its feature length and returns the mel features `generate`
  needs. `tools`, `environment_factory` and `rollout_func` are refused.
- `_get_per_token_logps_and_entropies`: TRL's own chunked pass; a forward pre-hook gives each chunk's model
  call the features of exactly its rows. A pass without audio raises instead of scoring text only.
- `_compute_loss`: exposes the micro-batch's features to the policy pass.
- `_calculate_rewards`: after TRL's per-rank rewards are gathered, batch-wide rewards (`batch_wide = True`) are
  computed once, on the main process, and broadcast; a reward's exception on any rank stops every rank with it;
  `audio/clipped_clips` and `judge/failures` are step totals over the ranks (audiothink/reward_api.py); a row
  whose optimised rewards are all None is left out of the step; the think/* metrics are logged
  (audiothink/think_metrics.py).
- checkpoints and resume: complete checkpoints only, strict weight loading, the same prompts after a resume
  (audiothink/plumbing/checkpoints.py, audiothink/plumbing/sampler.py).

Elsewhere: the fast rollout (audiothink/fast_rollout.py); the completions.jsonl sample (a callback:
audiothink.plumbing.runfiles.CompletionSample); the console and health callbacks (added by audiothink.train: a
trainer built from Python keeps transformers' console); one audio-encoder pass per distinct clip
(audiothink.models); with `use_vllm`, TRL's engine wrapped by audiothink.vllm_rollout.AudioVLLMGeneration
(unexpanded prompt ids + the audio, weights synced under checkpoint names) and the rollout–trainer agreement
gate logged every step (`rollout/logprob_corr`, `rollout/logprob_abs_diff`, a warning below 0.995).

Rows are TRL's: `prompt` is the user text; the `audio` column holds the clip paths of each row. Audio
tensors are stored per row as `(rows, max_clips, ...)` plus a clip count, so TRL's row shuffling and
splitting keep them aligned with the token ids whatever the number of clips per prompt.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler, shutdown_event_loop_in_daemon, start_event_loop_in_daemon

from audiothink.audio import AudioError, AudioWindow
from audiothink.fast_rollout import enable_fast_generation
from audiothink.models import share_audio_encoder_passes
from audiothink.plumbing import checkpoints
from audiothink.plumbing.runfiles import CompletionSample
from audiothink.plumbing.sampler import EpochRepeatSampler
from audiothink.prompts import BYPASSES_AUDIO_PATH, AudioPrompt, marker_ids
from audiothink.plumbing.sharding import check_engine, fsdp_on_cpu_processes
from audiothink.reward_api import (as_reward, collect_errors, drop_rows_without_optimised_reward, raise_failures,
                                   score_batch_wide, score_batch_wide_once)
from audiothink.think_metrics import think_metrics
from audiothink.vllm_rollout import audio_engine_in, check_vllm_config, rollout_agreement

logger = logging.getLogger(__name__)

AUDIO_PREFIX = "audio__"  # keys of per-row audio tensors in TRL's batch dict
CLIP_COUNT_KEY = AUDIO_PREFIX + "clips"


# ----------------------------------------------------------------------------------------------------------
# per-row audio tensors


def pack_clips(per_clip: dict[str, torch.Tensor], clip_counts: Sequence[int]) -> dict[str, torch.Tensor]:
    """Regroup the processor's per-clip tensors `(n_clips, ...)` into per-row `(rows, max_clips, ...)`."""
    rows, max_clips = len(clip_counts), max(clip_counts)
    packed: dict[str, torch.Tensor] = {}
    for name, tensor in per_clip.items():
        if tensor.size(0) != sum(clip_counts):
            raise ValueError(f"processor output {name!r} has {tensor.size(0)} clips, expected {sum(clip_counts)}")
        out = tensor.new_zeros((rows, max_clips, *tensor.shape[1:]))
        start = 0
        for row, n in enumerate(clip_counts):
            out[row, :n] = tensor[start : start + n]
            start += n
        packed[AUDIO_PREFIX + name] = out
    packed[CLIP_COUNT_KEY] = torch.tensor(list(clip_counts), dtype=torch.long)
    return packed


def unpack_clips(packed: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    """The model kwargs (`input_features`, `feature_attention_mask`, ...) for rows `start:end`, clips in order."""
    counts = packed[CLIP_COUNT_KEY][start:end]
    max_clips = next(v for k, v in packed.items() if k != CLIP_COUNT_KEY).size(1)
    valid = torch.arange(max_clips, device=counts.device)[None, :] < counts[:, None]
    return {
        k[len(AUDIO_PREFIX) :]: v[start:end][valid.to(v.device)]
        for k, v in packed.items()
        if k != CLIP_COUNT_KEY
    }


@lru_cache(maxsize=256)
def _cached_audio(path: str, window: AudioWindow) -> tuple[list[np.ndarray], bool]:
    # Each clip of a step is needed G times (once per completion); 256 clips of 30 s stay under 0.5 GB (chunked
    # long clips are kept whole: 2 MB a minute). The G copies share the arrays (the vLLM rows send each once).
    return window.load(path)


class AudioGRPOTrainer(GRPOTrainer):
    """GRPO on audio language models (Qwen2-Audio, Qwen2.5-Omni thinker).

    Example (the toy that ships with the package; see `audiothink.train` for the full entry point)::

        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
        from trl import GRPOConfig
        from audiothink.trainer import AudioGRPOTrainer
        from audiothink.rewards import AdaptiveThink, Format

        processor = AutoProcessor.from_pretrained(model_dir)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir)
        trainer = AudioGRPOTrainer(
            model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format()],
            args=GRPOConfig(output_dir="out", num_generations=4, max_steps=10),
            train_dataset=dataset,  # columns: prompt (str), audio (list of paths), answer, choices, ...
        )
        trainer.train()
    """

    def __init__(
        self,
        model,
        reward_funcs: list[Callable],
        args: GRPOConfig,
        train_dataset,
        processor,
        *,
        max_audio_seconds: float | None = None,
        long_audio: str = "truncate",
        completion_prompts: int = 2,
        fast_generation: bool = False,
        compile_cache_dir: str | os.PathLike | None = None,
        share_encoder_passes: bool = True,
        prefill: str = "",
        **kwargs,
    ):
        # tools / environment_factory / rollout_func would take the prompt off the audio path: refused before TRL
        # builds anything (the config keys are refused by audiothink.plumbing.validate)
        for name, reason in BYPASSES_AUDIO_PATH.items():
            if kwargs.get(name):
                raise ValueError(f"AudioGRPOTrainer({name}=...): {reason}")
        self.processor = processor
        # Text that starts every rollout's reply ("<think>" or "<answer>": a forced mode, see
        # audiothink.formats.force_prefill). It is part of the prompt ids (never trained on) and of the
        # completion the rewards read.
        self.prefill = prefill
        # The rollouts' prompts: the builder evaluation uses too (audiothink/prompts.py), with the prefill and
        # TRL's chat_template_kwargs (which TRL's own _tokenize_prompts would apply; ours replaces it)
        self.audio_prompt = AudioPrompt(processor, prefill=prefill, chat_template_kwargs=args.chat_template_kwargs)
        # What each clip becomes under the model's window (data.long_audio: chunk, truncate, error): the rule
        # evaluation, the held-out scoring and the row checks use (audiothink.audio.AudioWindow); the vLLM rows get
        # the clips it gives
        self.audio_window = AudioWindow.of(processor.feature_extractor,
                                           getattr(getattr(model, "config", None), "model_type", None),
                                           max_audio_seconds, long_audio)
        tokenizer = processor.tokenizer
        # A sampled placeholder token would have no audio feature behind it: the next forward fails (or,
        # worse, the legacy merge path silently shifts features). Ban every audio marker from sampling.
        banned = marker_ids(processor)
        args.generation_kwargs = {**(args.generation_kwargs or {}), "suppress_tokens": banned}
        self.banned_token_ids = banned
        # rollout.engine=vllm without vLLM installed, or an unknown vllm_mode, fails here, before TRL starts anything
        check_vllm_config(args)

        # Each reward wrapped once (audiothink.reward_api.Reward): named, its output checked, batch-wide ones
        # a placeholder in TRL's per-rank pass and computed once after the gather (see _calculate_rewards).
        trl_funcs = [as_reward(f) for f in reward_funcs]
        self._batch_wide = {i: f for i, f in enumerate(trl_funcs) if getattr(f, "batch_wide", False)}
        # TRL is given the tokenizer: it then treats the model as text-in/text-out, and this class supplies
        # the audio. (Handed a processor, TRL assumes an image model and reads `config.image_token_id`.)
        # With use_vllm, TRL builds AudioVLLMGeneration instead of its engine (which would send vLLM the expanded
        # ids without the audio, and weights under in-memory names): audiothink/vllm_rollout.py
        import trl.trainer.grpo_trainer as trl_grpo

        swap = audio_engine_in(trl_grpo, processor, waves=lambda: self._pending_waves) if args.use_vllm else nullcontext()
        with swap:
            super().__init__(
                model=model,
                reward_funcs=trl_funcs,
                args=args,
                train_dataset=train_dataset,
                processing_class=tokenizer,
                **kwargs,
            )
        if fast_generation:
            self.enable_fast_generation(compile_cache_dir=compile_cache_dir)
        if completion_prompts > 0:  # completions.jsonl
            self.add_callback(CompletionSample(self, completion_prompts))
        # Each prompt comes G times per batch: encode each distinct clip once (exact; see audiothink.models).
        self.encoder_passes = share_audio_encoder_passes(self.model) if share_encoder_passes else None
        if share_encoder_passes and self.ref_model is not None:
            share_audio_encoder_passes(self.ref_model)
        self._audio_rows: dict[str, torch.Tensor] | None = None
        self._pending_waves: list[list[np.ndarray]] | None = None
        self._clipped_in_batch = 0
        self._clipped_in_step = 0  # over all ranks (_calculate_rewards)
        self._saving_checkpoint: str | None = None  # the checkpoint folder being written (atomic saves, below)

    # -- checkpoints and resume: complete checkpoints only, strict loads (audiothink/plumbing/checkpoints.py) ------

    def _save_checkpoint(self, model, trial):
        """The Trainer's save, marked "being written" until ``_maybe_log_save_evaluate`` has flushed every file (the
        ``on_save`` callbacks' too); a full disk is one line naming the checkpoint."""
        with checkpoints.marked_save(self, trial):
            super()._save_checkpoint(model, trial)

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        with checkpoints.completing_saves(self):
            return super()._maybe_log_save_evaluate(*args, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """No model card: TRL's draft is written for hub models, and for a local checkpoint (the toy, or
        ``model.path=/models/...``) it calls the run "a fine-tuned version of [None]" with a ``model="None"``
        usage snippet. The run folder's config.yaml and summary.json say what was trained."""
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume's weight loading, strict and under the right names (see audiothink/plumbing/checkpoints.py).

        Full fine-tuning: the Trainer would load hub-named tensors into in-memory names with strict=False,
        i.e. nothing, with a warning. LoRA: the adapter's tensors must match the model's exactly. Sharded
        engines (FSDP, DeepSpeed) keep their own loaders.
        """
        model = self.model if model is None else model
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(model):
            checkpoints.check_adapter_checkpoint(model, resume_from_checkpoint)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        n = checkpoints.load_full_checkpoint(model, resume_from_checkpoint)
        logger.info("resume: loaded %d tensors from %s", n, resume_from_checkpoint)

    def load_checkpoint_weights(self, checkpoint: str) -> None:
        """The weights and trainer state of ``checkpoint``, without training (a resume with nothing left to do)."""
        from transformers import TrainerState

        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))

    def _get_train_sampler(self, dataset=None):
        # a sampler whose epoch order survives a resume (EpochRepeatSampler)
        sampler = super()._get_train_sampler(dataset)
        return EpochRepeatSampler.like(sampler) if isinstance(sampler, RepeatSampler) else sampler

    def create_accelerator_and_postprocess(self) -> None:
        # FSDP on CPU process groups, and a stop when the launched engine is not the one that would train
        # (accelerate 1.15 falls back to DDP without a word; audiothink/plumbing/sharding.py)
        with fsdp_on_cpu_processes():
            super().create_accelerator_and_postprocess()
        check_engine(self.accelerator)

    def enable_fast_generation(self, bucket: int = 64, compile_cache_dir: str | os.PathLike | None = None) -> str:
        """Static KV cache + torch.compile'd decode for the HF rollout; returns the compile cache folder
        (:func:`audiothink.fast_rollout.enable_fast_generation`)."""
        return enable_fast_generation(self, bucket=bucket, compile_cache_dir=compile_cache_dir)

    # -- audio plumbing ----------------------------------------------------------------------------------

    @contextmanager
    def _audio(self, rows: dict[str, torch.Tensor]):
        previous, self._audio_rows = self._audio_rows, rows
        try:
            yield
        finally:
            self._audio_rows = previous

    def _load_waves(self, inputs: list[dict]) -> list[list[np.ndarray]]:
        waves = []
        self._clipped_in_batch = 0
        for row in inputs:
            paths = row["audio"]
            if isinstance(paths, str):
                paths = [paths]
            clips = []
            for path in paths:
                try:
                    pieces, clipped = _cached_audio(str(path), self.audio_window)
                except AudioError:
                    # validated at load time, so the file changed since: name the row and fail
                    self.audio_window.load(path, row_id=str(row.get("id", "?")))
                    raise
                self._clipped_in_batch += bool(clipped)
                clips.extend(pieces)  # a clip over the window under data.long_audio=chunk: its pieces, in order
            waves.append(clips)
        return waves

    def _features_to_model(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device, dtype = self.accelerator.device, self.model.dtype
        return {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in features.items()
        }

    def _generate_and_score_completions(self, inputs):
        self._pending_waves = self._load_waves(inputs)
        rows: dict[str, torch.Tensor] = {}
        # _tokenize_prompts fills `rows` in place; the log-prob passes inside TRL's method read it.
        with self._audio(rows):
            output = super()._generate_and_score_completions(inputs)
        self._pending_waves = None
        output.update({k: v.to(self.accelerator.device) for k, v in rows.items()})
        mode = "train" if self.model.training else "eval"
        # clips of this step cut to the audio window, all ranks (a resumed run logs what an uninterrupted one does)
        self._metrics[mode]["audio/clipped_clips"].append(float(self._clipped_in_step))
        if self.use_vllm:  # rollout/logprob_corr, rollout/logprob_abs_diff: vLLM's log-probs vs the trainer's
            gate = rollout_agreement(output, self.accelerator.gather, warn=self.accelerator.is_main_process,
                                     step=self.state.global_step + 1)
            for name, value in gate.items():
                self._metrics[mode][name].append(value)
        if mode == "train":  # the rollout the completion sample writes (audiothink.plumbing.runfiles.CompletionSample)
            self._train_rollout_columns = self._sample_columns
        return output

    def _tokenize_prompts(self, prompts: list):
        waves = self._pending_waves
        if waves is None or len(waves) != len(prompts):
            raise RuntimeError("audio for this batch was not loaded before tokenizing its prompts")
        encoded = self.audio_prompt.encode(prompts, waves)
        prompt_ids = [
            ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        ]
        per_clip = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
        packed = pack_clips(per_clip, [len(c) for c in waves])
        assert self._audio_rows is not None
        self._audio_rows.clear()
        self._audio_rows.update(packed)
        # For generate: the flat per-clip tensors, in the model's dtype.
        return prompt_ids, None, self._features_to_model(per_clip)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal_kwargs):
        """TRL's chunked log-prob pass, its own body, with each chunk's audio features (no images): a forward
        pre-hook on `model` adds to each call the features of the rows its `input_ids` are, checked, so a TRL that
        called the model another way fails here instead of scoring a chunk with another row's audio."""
        unexpected = [k for k, v in multimodal_kwargs.items() if v is not None]
        if unexpected:
            raise ValueError(f"AudioGRPOTrainer does not support image inputs: {unexpected}")
        rows = self._audio_rows
        if not rows or rows[CLIP_COUNT_KEY].size(0) != input_ids.size(0):
            raise RuntimeError(
                "log-prob pass without the batch's audio features "
                f"({0 if not rows else rows[CLIP_COUNT_KEY].size(0)} audio rows for {input_ids.size(0)} sequences)"
            )
        fed = 0  # rows whose features went into a forward so far

        def feed_chunk_audio(module, args, kwargs):
            nonlocal fed
            ids = kwargs.get("input_ids")
            n = 0 if ids is None else ids.size(0)
            if args or not n or not torch.equal(ids, input_ids[fed : fed + n]):
                raise RuntimeError("TRL's log-prob pass called the model other than once per chunk, rows in order "
                                   "(input_ids=...): its audio cannot be matched (tests/test_trainer_signatures.py)")
            kwargs.update(self._features_to_model(unpack_clips(rows, fed, fed + n)))
            fed += n
            return args, kwargs

        # prepend: before any wrapper's own pre-hook (FSDP2 casts and moves the inputs), as a direct argument would be
        handle = model.register_forward_pre_hook(feed_chunk_audio, with_kwargs=True, prepend=True)
        try:
            out = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
            )
        finally:
            handle.remove()
        if fed != input_ids.size(0):
            raise RuntimeError(f"TRL's log-prob pass scored {fed} of {input_ids.size(0)} rows with their audio")
        return out

    def _compute_loss(self, model, inputs):
        rows = {k: v for k, v in inputs.items() if k.startswith(AUDIO_PREFIX)}
        with self._audio(rows):
            return super()._compute_loss(model, inputs)

    # -- rewards -----------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self.prefill:  # the rewards score the reply as a whole: prefill + what the model wrote
            completions = [self.prefill + c if isinstance(c, str) else c for c in completions]
        # An exception in a reward (a local part too) is held until every rank has reached TRL's gather ...
        with collect_errors(self.reward_funcs) as failures:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # ... then one exchange: each rank's first reward error (raised on every rank), its clips cut to the audio
        # window and its judge failures (logged as step totals, not rank 0's count or a mean over ranks)
        rank, is_main = self.accelerator.process_index, self.accelerator.is_main_process
        judged = self._pending_metrics.pop("judge/failures", None)
        own = failures[0] if failures else None
        shared = gather_object([(own, self._clipped_in_batch, sum(judged) if judged else None)])
        raise_failures([s[0] for s in shared], rank, own)
        self._clipped_in_step = sum(s[1] for s in shared)
        all_completions = gather_object(list(completions))
        keys = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        columns = {k: gather_object([row[k] for row in inputs]) for k in keys}
        if self._batch_wide:
            # once, on the main process, broadcast to all (an exception there stops every rank with it)
            all_prompts, group_ids = gather_object(list(prompts)), self._group_ids(len(all_completions))
            scored = score_batch_wide_once(lambda: score_batch_wide(
                self._batch_wide,
                self.reward_func_names,
                all_completions,
                columns,
                {"prompts": all_prompts, "group_ids": group_ids, "trainer_state": self.state,
                 "log_metric": self._log_metric},
                reward_values={
                    name: [None if math.isnan(v) else v for v in rewards_per_func[:, i].tolist()]
                    for i, name in enumerate(self.reward_func_names)
                },
                run_async=self._run_async,
            ), rank=rank, num_processes=self.accelerator.num_processes)
            for index, values in scored.items():
                rewards_per_func[:, index] = torch.tensor(values, dtype=rewards_per_func.dtype)
        # One count per step: the judge calls of every rank (consistency, think_quality, ...) and of the main
        # process's batch-wide rewards add up; TRL averages a pending metric over the ranks that hold it: main.
        judged = [s[2] for s in shared if s[2] is not None] + self._pending_metrics.pop("judge/failures", [])
        if judged and is_main:
            self._pending_metrics["judge/failures"] = [float(sum(judged))]
        drop_rows_without_optimised_reward(rewards_per_func, self.reward_weights)
        # the share of completions with at least one optimised reward (0: nothing to learn from; audiothink.plumbing.health)
        optimised = rewards_per_func[:, (self.reward_weights != 0).to(rewards_per_func.device)]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["health/scored"].append((~torch.isnan(optimised)).any(dim=1).float().mean().item())
        for name, value in think_metrics(all_completions, columns, self._tokenizer).items():  # think/*
            self._metrics[mode][name].append(value)
        self._sample_columns = columns  # for the completion sample, written once the advantages are known
        return rewards_per_func

    def _run_async(self, coroutine):
        """Run `coroutine` on TRL's reward event loop (started here if TRL saw no async reward)."""
        if getattr(self, "async_loop", None) is None:
            self.async_loop_thread, self.async_loop, ready = start_event_loop_in_daemon(name="AudioGRPO-AsyncLoop")
            ready.wait()
            atexit.register(shutdown_event_loop_in_daemon, self.async_loop_thread, self.async_loop)
        return asyncio.run_coroutine_threadsafe(coroutine, self.async_loop).result()

    def _group_ids(self, n: int) -> list[int]:
        # TRL's sampler lays out each prompt's G completions contiguously, rank after rank.
        g = self.num_generations if self.model.training else self.num_generations_eval
        return [i // g for i in range(n)]
