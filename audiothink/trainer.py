"""AudioGRPOTrainer: TRL's GRPOTrainer with audio in every forward pass.

TRL's GRPOTrainer knows images, not audio. Handed a Qwen2-Audio model it would generate *with* the audio
(if the processor ran) but score the completions - policy, old and reference log-probs - on the text
tokens alone, silently training the model on placeholder embeddings. This subclass closes that hole and
adds the one thing TRL's reward loop lacks, rewards computed over the whole gathered batch.

What is overridden, and why (each signature is pinned by tests/test_trainer_signatures.py):

- `_generate_and_score_completions`: loads the batch's audio, runs TRL's generation/scoring with it, and
  attaches the per-row audio features to the returned batch so they travel through TRL's shuffle/split.
- `_tokenize_prompts`: the prompt of `audiothink.prompts.AudioPrompt` (the builder evaluation uses: one audio
  part per clip, the chat template with `chat_template_kwargs`, the forced mode's prefill), through the
  *processor* (not just the tokenizer), which expands each `<|AUDIO|>` to its feature length and returns the
  mel features that `generate` needs. `tools`, `environment_factory` and `rollout_func` are refused.
- `_get_per_token_logps_and_entropies`: every log-prob pass (policy, old, reference) gets the features
  of exactly its rows. A pass without audio raises instead of silently scoring text only.
- `_compute_loss`: exposes the micro-batch's features to the policy pass.
- `_calculate_rewards`: after TRL's per-rank rewards are gathered, batch-wide rewards (`batch_wide = True`,
  e.g. the adaptive think/no-think balance, a reward formula) are computed once on the gathered batch,
  identically on every rank (async ones awaited on TRL's event loop); every reward's output is checked
  (length, NaN, non-numbers: an error naming the reward); a row whose optimised rewards are all None is
  left out of the step; think-rate and think-length metrics are logged; a sample of completions is written.
- `_save_checkpoint` / `_maybe_log_save_evaluate`: a checkpoint is marked "being written" until all of it (the
  `on_save` callbacks' files too) is flushed to disk, so a resume never takes a half-written one; a full disk
  is one line naming the checkpoint (audiothink/plumbing/checkpoints.py).

Also, outside those overrides: each distinct clip of a batch goes through the audio encoder once, not
once per completion (`audiothink.models.share_audio_encoder_passes`, exact); with `use_vllm` TRL's engine
is replaced by `audiothink.vllm_rollout.AudioVLLMGeneration` (unexpanded prompt ids + the audio for vLLM,
weights synced under checkpoint names).

Rows are TRL's: `prompt` is the user text; the `audio` column holds the clip paths of each row. Audio
tensors are stored per row as `(rows, max_clips, ...)` plus a clip count, so TRL's row shuffling and
splitting keep them aligned with the token ids whatever the number of clips per prompt.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler, shutdown_event_loop_in_daemon, start_event_loop_in_daemon

from audiothink.audio import AudioError, load_audio
from audiothink.formats import completion_text, parse
from audiothink.plumbing.console import ProgressLine
from audiothink.plumbing.health import HealthMonitor
from audiothink.models import share_audio_encoder_passes
from audiothink.prompts import BYPASSES_AUDIO_PATH, AudioPrompt, marker_ids
from audiothink.plumbing.sharding import check_engine, fsdp_on_cpu_processes
from audiothink.vllm_rollout import AudioVLLMGeneration, check_vllm_config
from audiothink.reward_api import is_batch_wide, score_batch_wide, trl_reward
from audiothink.scoring import is_correct

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
def _cached_audio(path: str, max_seconds: float | None) -> tuple[np.ndarray, bool]:
    # Each clip of a step is needed G times (once per completion); 256 clips of 30 s stay under 0.5 GB.
    return load_audio(path, max_seconds=max_seconds)


# ----------------------------------------------------------------------------------------------------------
# fast rollout: where torch.compile keeps what it compiled

# Default home of the compile caches (rollout.compile_cache_dir: null): outside any run folder, so that every
# run of the same model shape on this machine (or on a shared home) finds what an earlier run compiled.
DEFAULT_COMPILE_CACHE = "~/.cache/audiothink/inductor"


def use_compile_cache(directory: str | os.PathLike | None = None) -> str:
    """Point torch.compile's on-disk caches at `directory` and return the folder used.

    torch.compile (inductor) keeps compiled graphs (its FX graph cache and AOTAutograd cache) and the
    Triton / C++ kernels under ``TORCHINDUCTOR_CACHE_DIR``; by default that is ``/tmp/torchinductor_<user>``,
    which a reboot or a fresh container empties. Which folder, in this order: `directory` when given; else a
    ``TORCHINDUCTOR_CACHE_DIR`` the user exported (one that is not torch's own default); else
    :data:`DEFAULT_COMPILE_CACHE`. Processes sharing the folder (the ranks of one launch, later runs) are
    safe: inductor writes each entry atomically. Whether the FX graph cache is on stays torch's setting
    (on by default; ``TORCHINDUCTOR_FX_GRAPH_CACHE=0`` turns it off).
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if directory is None and current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        directory = current
    path = os.path.abspath(os.path.expanduser(str(directory if directory is not None else DEFAULT_COMPILE_CACHE)))
    os.makedirs(path, exist_ok=True)
    # read by inductor at each use (torch._inductor.runtime.cache_dir_utils.cache_dir), so setting it before
    # the first compile is enough; the Triton kernel cache follows it unless TRITON_CACHE_DIR is set
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    if path != (os.path.abspath(current) if current else None):
        logger.info("torch.compile caches: %s", path)
    return path


# ----------------------------------------------------------------------------------------------------------
# resume


class EpochRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, plus ``set_epoch``: epoch e draws the order an uninterrupted run draws in epoch e.

    TRL's sampler shuffles with one generator that advances pass after pass, so a resume in epoch e (a fresh
    sampler) would replay epoch 0's order. ``set_epoch`` (the Trainer calls it every epoch) re-seeds the
    generator and advances it by e permutations, exactly what e earlier passes consumed: an uninterrupted
    run is unchanged, a resumed one sees the same prompts.
    """

    @classmethod
    def like(cls, sampler: RepeatSampler) -> "EpochRepeatSampler":
        return cls(data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count,
                   batch_size=sampler.batch_size, repeat_count=sampler.repeat_count, shuffle=sampler.shuffle,
                   seed=sampler.seed)

    def set_epoch(self, epoch: int) -> None:
        if self.seed is None or not self.shuffle:
            return
        self.generator.manual_seed(self.seed)
        if self.shuffle:
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)


# ----------------------------------------------------------------------------------------------------------


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
        self.max_audio_seconds = max_audio_seconds
        self.completion_prompts = completion_prompts
        tokenizer = processor.tokenizer
        # A sampled placeholder token would have no audio feature behind it: the next forward fails (or,
        # worse, the legacy merge path silently shifts features). Ban every audio marker from sampling.
        banned = marker_ids(processor)
        args.generation_kwargs = {**(args.generation_kwargs or {}), "suppress_tokens": banned}
        self.banned_token_ids = banned
        # rollout.engine=vllm without vLLM installed, or an unknown vllm_mode, fails here, before TRL starts anything
        check_vllm_config(args)

        # Batch-wide rewards are replaced by placeholders for TRL's per-rank pass (see _calculate_rewards);
        # per-sample ones are wrapped so that a NaN or a non-number fails naming the reward.
        self._batch_wide = {i: f for i, f in enumerate(reward_funcs) if is_batch_wide(f)}
        trl_funcs = [trl_reward(f, i, self._batch_wide) for i, f in enumerate(reward_funcs)]
        # TRL is given the tokenizer: it then treats the model as text-in/text-out, and this class supplies
        # the audio. (Handed a processor, TRL assumes an image model and reads `config.image_token_id`.)
        super().__init__(
            model=model,
            reward_funcs=trl_funcs,
            args=args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            **kwargs,
        )
        if self.use_vllm:
            # TRL's engine would send vLLM the expanded ids without the audio, and weights under in-memory names
            self.vllm_generation = AudioVLLMGeneration.adopt(
                self.vllm_generation, processor, waves=lambda: self._pending_waves
            )
        if fast_generation:
            self.enable_fast_generation(compile_cache_dir=compile_cache_dir)
        # health/* metrics and warnings for steps without a learning signal; placed before the loggers so that
        # TensorBoard and metrics.jsonl get them (audiothink.plumbing.health)
        self.health = HealthMonitor()
        self.callback_handler.callbacks.insert(1, self.health)
        # one compact line per logging step instead of the progress bar and the printed metrics dict
        for cb in (ProgressCallback, PrinterCallback):
            self.remove_callback(cb)
        self.add_callback(ProgressLine(self.health))
        # Each prompt comes G times per batch: encode each distinct clip once (exact; see audiothink.models).
        self.encoder_passes = share_audio_encoder_passes(self.model) if share_encoder_passes else None
        if share_encoder_passes and self.ref_model is not None:
            share_audio_encoder_passes(self.ref_model)
        self._audio_rows: dict[str, torch.Tensor] | None = None
        self._pending_waves: list[list[np.ndarray]] | None = None
        self._clipped_in_batch = 0
        self._saving_checkpoint: str | None = None  # the checkpoint folder being written (atomic saves, below)

    # -- checkpoints: complete only once every file is on disk (audiothink/plumbing/checkpoints.py) ----------------

    def _save_checkpoint(self, model, trial):
        """The Trainer's save, inside a "being written" marker that ``_maybe_log_save_evaluate`` removes once
        the files (the ``on_save`` callbacks' too, e.g. the processor) are flushed; a full disk is one line."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from audiothink.plumbing.checkpoints import begin_save, disk_full_as_error

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self._saving_checkpoint = folder
        with disk_full_as_error(folder):
            if self.args.should_save:
                begin_save(folder)
            super()._save_checkpoint(model, trial)

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        from audiothink.plumbing.checkpoints import disk_full_as_error, end_save

        with disk_full_as_error(lambda: self._saving_checkpoint):
            out = super()._maybe_log_save_evaluate(*args, **kwargs)
            if self._saving_checkpoint is not None:
                if self.accelerator.num_processes > 1:
                    self.accelerator.wait_for_everyone()  # every rank's files (RNG states, optimizer shards)
                if self.args.should_save:
                    end_save(self._saving_checkpoint)
                self._saving_checkpoint = None
        return out

    # -- resume -----------------------------------------------------------------------------------------

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
        from audiothink.plumbing.checkpoints import check_adapter_checkpoint, load_full_checkpoint

        model = self.model if model is None else model
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(model):
            check_adapter_checkpoint(model, resume_from_checkpoint)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        n = load_full_checkpoint(model, resume_from_checkpoint)
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
        """Static KV cache + torch.compile'd decode step for the HF rollout (GPU); returns the compile cache folder.

        2.6x plain `generate` for Qwen2-Audio-7B on an H100 (bench/RESULTS.md). The cache's shape is the
        padded prompt length + max_new_tokens and a new shape recompiles (about a minute at 7B), so
        prompts are padded to multiples of `bucket` tokens (unless the config already set a multiple).

        What is compiled, and when (transformers 5.23 + torch 2.13, checked on CPU in
        tests/test_compile_cache.py): later steps reuse the compiled forward, and so does another trainer in
        the same process, even on another model object of the same architecture (dynamo's guards are on
        shapes and types). The first bucket compiles a graph for its exact shapes; the
        second compiles once more with the changed sizes made symbolic (dynamo's automatic dynamic shapes),
        and that graph then serves every later bucket without compiling. transformers never shrinks a model's
        static cache (`_previous_max_cache_length`): after a longer bucket, every rollout decodes with the
        longest cache seen so far. Between processes, torch.compile's
        on-disk caches (inductor's FX graph cache, the compiled kernels) are reused from `compile_cache_dir`
        (see :func:`use_compile_cache`): the next run of the same model shape skips code generation and
        kernel compilation, though dynamo still traces the model once.
        """
        self.generation_config.cache_implementation = "static"
        self.generation_config.disable_compile = False
        self.pad_to_multiple_of = self.pad_to_multiple_of or bucket
        return use_compile_cache(compile_cache_dir)

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
                    wave, clipped = _cached_audio(str(path), self.max_audio_seconds)
                except AudioError:
                    # validated at load time, so the file changed since: name the row and fail
                    load_audio(path, max_seconds=self.max_audio_seconds, row_id=str(row.get("id", "?")))
                    raise
                self._clipped_in_batch += bool(clipped)
                clips.append(wave)
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
        # clips of this batch cut to the audio window (per step: a resumed run logs what an uninterrupted one does)
        self._metrics[mode]["audio/clipped_clips"].append(float(self._clipped_in_batch))
        if mode == "train":
            self._write_completion_sample()
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

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_kwargs,
    ):
        """TRL's chunked log-prob pass, with each chunk's audio features; images are not supported."""
        unexpected = [k for k, v in multimodal_kwargs.items() if v is not None]
        if unexpected:
            raise ValueError(f"AudioGRPOTrainer does not support image inputs: {unexpected}")
        rows = self._audio_rows
        if not rows or rows[CLIP_COUNT_KEY].size(0) != input_ids.size(0):
            raise RuntimeError(
                "log-prob pass without the batch's audio features "
                f"({0 if not rows else rows[CLIP_COUNT_KEY].size(0)} audio rows for {input_ids.size(0)} sequences)"
            )
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, all_aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids = input_ids[start:end]
            mask = attention_mask[start:end]
            model_inputs = {"input_ids": ids, "attention_mask": mask}
            model_inputs.update(self._features_to_model(unpack_clips(rows, start, end)))
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            # Only the completion tokens are scored
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux.append(outputs.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux

    def _compute_loss(self, model, inputs):
        rows = {k: v for k, v in inputs.items() if k.startswith(AUDIO_PREFIX)}
        with self._audio(rows):
            return super()._compute_loss(model, inputs)

    # -- rewards -----------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self.prefill:  # the rewards score the reply as a whole: prefill + what the model wrote
            completions = [self.prefill + c if isinstance(c, str) else c for c in completions]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        all_completions = gather_object(list(completions))
        keys = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        columns = {k: gather_object([row[k] for row in inputs]) for k in keys}
        if self._batch_wide:
            scored = score_batch_wide(
                self._batch_wide,
                self.reward_func_names,
                all_completions,
                columns,
                {
                    "prompts": gather_object(list(prompts)),
                    "group_ids": self._group_ids(len(all_completions)),
                    "trainer_state": self.state,
                    "log_metric": self._log_metric,
                },
                reward_values={
                    name: [None if math.isnan(v) else v for v in rewards_per_func[:, i].tolist()]
                    for i, name in enumerate(self.reward_func_names)
                },
                run_async=self._run_async,
            )
            for index, values in scored.items():
                rewards_per_func[:, index] = torch.tensor(values, dtype=rewards_per_func.dtype)
        self._drop_rows_without_optimised_reward(rewards_per_func)
        # the share of completions with at least one optimised reward (0: nothing to learn from; audiothink.plumbing.health)
        optimised = rewards_per_func[:, (self.reward_weights != 0).to(rewards_per_func.device)]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["health/scored"].append((~torch.isnan(optimised)).any(dim=1).float().mean().item())
        # One count per step: the step's judge calls (consistency, think_quality, ...) add up.
        if self._pending_metrics.get("judge/failures"):
            self._pending_metrics["judge/failures"] = [sum(self._pending_metrics["judge/failures"])]
        self._log_think_metrics(all_completions, columns)
        self._sample_columns = columns  # for the completion sample, written once the advantages are known
        return rewards_per_func

    def _drop_rows_without_optimised_reward(self, rewards_per_func: torch.Tensor) -> None:
        """A row whose every weighted reward is None gets None everywhere, so TRL leaves it out of the step.

        TRL drops a row (advantage 0, out of its group's baseline) only when *all* columns are None; a
        weight-0 column (logged, not optimised: e.g. the components of a formula) would otherwise keep the
        row in, and TRL's nansum would pay it a made-up 0.
        """
        weighted = (self.reward_weights != 0).to(rewards_per_func.device)
        if not weighted.any() or weighted.all():
            return
        nan = torch.isnan(rewards_per_func)
        drop = nan[:, weighted].all(dim=1) & ~nan.all(dim=1)
        if drop.any():
            rewards_per_func[drop] = float("nan")

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

    def _log_think_metrics(self, completions: list, columns: dict[str, list] | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        parsed = [parse(c) for c in completions]
        thinks = [p for p in parsed if p.thinks]
        self._metrics[mode]["think/rate"].append(len(thinks) / max(len(parsed), 1))
        columns = columns or {}
        correct = None
        if "answer" in columns and "choices" in columns:
            # correct by the benchmarks' rule (audiothink.rewards.Accuracy's default), whatever the configured rewards
            correct = [is_correct(c, a, ch) for c, a, ch in zip(completions, columns["answer"], columns["choices"])]
            scored = [bool(x) for x in correct if x is not None]
            if scored:
                self._metrics[mode]["accuracy/rate"].append(sum(scored) / len(scored))
        # per difficulty (the toy's easy / hard, MMAU's easy / medium / hard): when to think is the point
        by: dict[str, list[int]] = {}
        for i, d in enumerate(columns.get("difficulty") or []):
            if d:
                by.setdefault(str(d), []).append(i)
        for d, idx in sorted(by.items()):
            self._metrics[mode][f"think/rate/{d}"].append(sum(parsed[i].thinks for i in idx) / len(idx))
            if correct is not None:
                flags = [bool(correct[i]) for i in idx if correct[i] is not None]
                if flags:
                    self._metrics[mode][f"accuracy/rate/{d}"].append(sum(flags) / len(flags))
        self._metrics[mode]["format/malformed_rate"].append(
            sum(not p.well_formed for p in parsed) / max(len(parsed), 1)
        )
        # the share with an answer block (audiothink.plumbing.health: a cut completion may still have answered)
        self._metrics[mode]["completions/answered"].append(sum(p.answer is not None for p in parsed) / max(len(parsed), 1))
        if thinks:
            lengths = [len(self._tokenizer(p.think or "", add_special_tokens=False)["input_ids"]) for p in thinks]
            self._metrics[mode]["think/mean_tokens"].append(float(np.mean(lengths)))

    def _write_completion_sample(self) -> None:
        """``completions.jsonl``: every logging step, ``completion_prompts`` prompts with all their completions.

        One record per prompt: its question, choices, gold answer, task, difficulty and id, and for each of its
        G completions the text, each reward's value, the weighted total and the advantage (TRL's gathered
        copies, the ones the update used). Rolled out at global step k for optimizer step k + 1, so labelled
        k + 1, like that step's line in metrics.jsonl.
        """
        columns = getattr(self, "_sample_columns", None)
        if not self.accelerator.is_main_process or self.completion_prompts <= 0 or not columns:
            return
        step = self.state.global_step + 1
        every = self.state.logging_steps or self.args.logging_steps
        if every and step % max(int(every), 1) != 0:
            return
        texts = list(self._logs["completion"])
        advantages = list(self._logs["advantages"])
        rewards = {name: list(values) for name, values in self._logs["rewards"].items()}
        weights = dict(zip(self.reward_func_names, self.reward_weights.tolist()))
        g = self.num_generations
        n = min(len(texts), len(advantages), len(next(iter(columns.values()))))
        path = os.path.join(self.args.output_dir, "completions.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            for start in range(0, min(n, self.completion_prompts * g), g):
                row = {k: columns[k][start] for k in ("id", "question", "choices", "answer", "task", "difficulty")
                       if k in columns}
                completions = []
                for i in range(start, min(start + g, n)):
                    values = {name: (None if v[i] != v[i] else round(v[i], 4)) for name, v in rewards.items()}
                    scored = [weights[k] * v for k, v in values.items() if v is not None]
                    completions.append({
                        "text": self.prefill + completion_text(texts[i]),  # what the rewards read
                        "rewards": values,
                        "reward": round(sum(scored), 4) if scored else None,
                        "advantage": round(advantages[i], 4),
                    })
                f.write(json.dumps({"step": step, **row, "completions": completions}, ensure_ascii=False) + "\n")
