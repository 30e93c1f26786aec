"""Held-out scoring during training (``eval.every_steps``) and the best checkpoint (``eval.best_metric``).

Every ``eval.every_steps`` optimizer steps :class:`HeldoutEval` scores the run's held-out items the way the
before/after summary does (the same items, prompt, greedy decoding, forced mode, :func:`audiothink.inference.score`)
and logs the figures as ``heldout/…`` at that step:

* ``heldout/accuracy``, ``heldout/think_rate``, ``heldout/format_failure_rate`` (all items), and per slice
  ``heldout/difficulty/<d>/accuracy``, ``heldout/task/<t>/think_rate``, … (:func:`heldout_logs`);
* into ``metrics.jsonl``, TensorBoard (under the same tags, next to the training curves) and the trainer's log
  history, plus one console line; ``python -m audiothink.plot`` draws them in ``training.png``.

With ``eval.best_metric`` (default ``heldout/accuracy``, ``eval.best_mode: max``) the weights (or the LoRA
adapter) of the best scoring so far go to ``<run>/best/`` with the processor and ``best.json`` (metric, mode,
value, step, the scoring's figures); ``final/`` stays the last step's. A resume reads ``best.json`` back, so a
later, worse scoring does not replace the best one.

Under a multi-process launch the items are split between the processes: each generates the answers of its
share (every process takes part in every forward pass, which the sharded engines need), the answers are
gathered, and every process computes the same figures (so that all take the same decision about ``best/``,
whose save needs them all under FSDP and ZeRO-3); the main process alone logs and writes. The items are
scored once per interval, not once per process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig
from transformers import TrainerCallback

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink.heldout")

__all__ = ["OVERALL_STATS", "SLICE_STATS", "metric_problem", "heldout_logs", "check_heldout_eval", "shard",
           "HeldoutEval", "attach", "BEST_DIR", "BEST_RECORD"]

# the figures of inference.score logged for all items, and for each slice (difficulty=<d>, task=<t>)
OVERALL_STATS = ("accuracy", "think_rate", "format_failure_rate")
SLICE_STATS = ("accuracy", "think_rate")
BEST_DIR, BEST_RECORD = "best", "best.json"


def metric_problem(metric: object) -> str | None:
    """Why ``metric`` cannot be an ``eval.best_metric`` (None: it has the form of a logged ``heldout/`` key)."""
    if not isinstance(metric, str):
        return "must be a heldout/... metric name (or null: keep no best/)"
    parts = metric.split("/")
    if len(parts) == 2 and parts[0] == "heldout" and parts[1] in OVERALL_STATS:
        return None
    if (len(parts) == 4 and parts[0] == "heldout" and parts[1] in ("difficulty", "task") and parts[2]
            and parts[3] in SLICE_STATS):
        return None
    return ("must be one of " + ", ".join(f"heldout/{s}" for s in OVERALL_STATS)
            + " or heldout/<difficulty|task>/<name>/<" + "|".join(SLICE_STATS) + ">")


def heldout_logs(result: dict) -> dict[str, float]:
    """``inference.score``'s result as flat ``heldout/…`` metrics (overall first, then each difficulty and task)."""
    logs = {f"heldout/{stat}": float(result["overall"][stat]) for stat in OVERALL_STATS}
    for key in ("by_difficulty", "by_task"):
        for name, stats in result.get(key, {}).items():
            for stat in SLICE_STATS:
                logs[f"heldout/{key[3:]}/{name}/{stat}"] = float(stats[stat])
    return logs


def _slices(samples) -> set[str]:
    return ({f"difficulty/{s.difficulty or 'unknown'}" for s in samples}
            | {f"task/{s.task or 'unknown'}" for s in samples})


def check_heldout_eval(eval_cfg: DictConfig, samples) -> None:
    """After the data is read (before the model loads): ``eval.every_steps`` needs held-out items, and a
    per-slice ``eval.best_metric`` a slice the items have."""
    every = eval_cfg.get("every_steps")
    if every is None:
        return
    if not samples:
        raise ConfigError(f"eval.every_steps={every}: the data has no held-out items to score (data.eval, or the "
                          "data's held-out share)")
    metric = eval_cfg.get("best_metric")
    if isinstance(metric, str) and metric.count("/") == 3:
        name = metric.rpartition("/")[0].partition("/")[2]
        have = _slices(samples)
        if name not in have:
            raise ConfigError(f"eval.best_metric={metric}: the held-out items have no slice {name} (they have "
                              f"{', '.join(sorted(have))})")


def shard(n: int, rank: int, world: int) -> list[int]:
    """The item indices process ``rank`` of ``world`` scores: consecutive shares of equal size, the last item
    repeated to fill the last ones (every process runs the same number of generate calls: under the sharded
    engines each forward pass needs all of them). One process: ``range(n)``, in order."""
    per = math.ceil(n / world) if n else 0
    padded = list(range(n)) + [n - 1] * (per * world - n)
    return padded[rank * per : (rank + 1) * per]


def attach(trainer, processor, samples, cfg: DictConfig, run_dir) -> "HeldoutEval | None":
    """With ``eval.every_steps`` set: a :class:`HeldoutEval` added to ``trainer``'s callbacks (else nothing)."""
    if cfg.eval.get("every_steps") is None or not samples:
        return None
    callback = HeldoutEval(trainer, processor, samples, cfg, run_dir)
    trainer.add_callback(callback)
    return callback


class HeldoutEval(TrainerCallback):
    """Scores the held-out ``samples`` every ``cfg.eval.every_steps`` optimizer steps; keeps ``<run>/best/``.

    ``trainer``: the :class:`audiothink.trainer.AudioGRPOTrainer` (its model, as the engine holds it, and its
    callbacks, which get the figures); ``cfg``: the run's config (prompt, eval.*, model.max_audio_seconds,
    force_mode, as :func:`audiothink.heldout_eval.summarise` reads them).
    """

    def __init__(self, trainer, processor, samples, cfg: DictConfig, run_dir: str | os.PathLike):
        self.trainer, self.processor, self.samples, self.cfg = trainer, processor, list(samples), cfg
        self.every = int(cfg.eval.every_steps)
        self.metric = cfg.eval.get("best_metric")
        self.mode = cfg.eval.get("best_mode", "max")
        self.run_dir = Path(run_dir)
        self.best: dict | None = None  # {"metric", "mode", "value", "step", "heldout"} of best/
        self.scorings = 0

    # -- the best record ---------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        """A resume (the state is past step 0) reads ``best/best.json`` back."""
        record = None
        if state.is_world_process_zero and state.global_step > 0:
            record = self._read_best(state.global_step)
        if self.trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            record = broadcast_object_list([record])[0]  # every process decides about best/ alike
        self.best = record

    def _read_best(self, step: int) -> dict | None:
        best, old = self.run_dir / BEST_DIR, self.run_dir / f"{BEST_DIR}.old"
        if not (best / BEST_RECORD).is_file() and (old / BEST_RECORD).is_file():
            # stopped between moving the previous best/ aside and putting the new one in place
            if best.exists():
                shutil.rmtree(best)
            os.replace(old, best)
        try:
            record = json.loads((best / BEST_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("metric") != self.metric or record.get("mode") != self.mode:
            log.info("held-out: %s/%s is by %s (%s), this run keeps the best by %s (%s): it is replaced at the "
                     "next scoring", BEST_DIR, BEST_RECORD, record.get("metric"), record.get("mode"), self.metric,
                     self.mode)
            return None
        where = (f"; it is from step {record['step']}, after the checkpoint resumed from: kept unless a step scores "
                 "better" if record.get("step", 0) > step else "")
        log.info("held-out: best so far %s %.1f%% at step %s (%s/)%s", self.metric, 100 * record["value"],
                 record["step"], BEST_DIR, where)
        return record

    def _better(self, value: float) -> bool:
        if not self.metric or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.mode == "max" else value < self.best["value"]

    # -- scoring -----------------------------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.score(args, state, control)

    def _generate(self, indices: list[int]) -> list[str]:
        """Greedy answers for ``indices``, with the model as the engine holds it (gathered where TRL's
        rollouts gather it, activation checkpointing off), exactly as :func:`audiothink.heldout_eval.summarise`."""
        import torch
        from trl.models import unwrap_model_for_generation

        from audiothink.formats import force_prefill
        from audiothink.inference import generate_answers
        from audiothink.prompts import config_chat_template_kwargs, config_long_audio

        trainer, cfg = self.trainer, self.cfg
        with (
            unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
            as model,
            torch.no_grad(),
            trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
        ):
            return generate_answers(
                model, self.processor, [self.samples[i] for i in indices], cfg.prompt,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                max_audio_seconds=cfg.model.max_audio_seconds, prefill=force_prefill(cfg.get("force_mode")),
                chat_template_kwargs=config_chat_template_kwargs(cfg), long_audio=config_long_audio(cfg),
            )

    def score(self, args, state, control) -> dict[str, float]:
        """Score the held-out items now; log the figures; update best/. Returns the logged figures."""
        from audiothink.inference import score

        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = shard(len(self.samples), rank, world)
        pairs = list(zip(mine, self._generate(mine)))
        if world > 1:
            from accelerate.utils import gather_object

            pairs = gather_object(pairs)
        answers = dict(pairs)  # the repeated filler items collapse
        result = score(self.samples, [answers[i] for i in range(len(self.samples))])
        self.scorings += 1
        logs = heldout_logs(result)
        saved = self._better(logs.get(self.metric, math.nan)) if self.metric else False
        if saved:
            self._save_best(state.global_step, logs)
        self._log(args, state, control, logs, saved)
        return logs

    def _log(self, args, state, control, logs: dict[str, float], saved: bool) -> None:
        """As ``Trainer.log`` does, without TRL's flush of the training metrics gathered since the last log:
        the trainer's log history, every callback (metrics.jsonl, W&B, ...), TensorBoard under the ``heldout/``
        tags themselves (its callback would file them under ``train/``), and a console line."""
        from transformers.integrations import TensorBoardCallback

        trainer = self.trainer
        state.log_history.append({**logs, "step": state.global_step})
        for cb in trainer.callback_handler.callbacks:
            if cb is self:
                continue
            if isinstance(cb, TensorBoardCallback):
                if state.is_world_process_zero:
                    if cb.tb_writer is None:
                        cb._init_summary_writer(args)
                    if cb.tb_writer is not None:
                        for key, value in logs.items():
                            cb.tb_writer.add_scalar(key, value, state.global_step)
                        cb.tb_writer.flush()
                continue
            cb.on_log(args, state, control, logs=dict(logs), model=trainer.model,
                      processing_class=trainer.processing_class, optimizer=trainer.optimizer,
                      lr_scheduler=trainer.lr_scheduler)
        if state.is_world_process_zero:
            log.info(self.line(state.global_step, state.max_steps, logs, saved))

    def line(self, step: int, total: int, logs: dict[str, float], saved: bool) -> str:
        """``held-out step 50/150 | accuracy 63.0% (easy 95.0% ...) | think 41.0% (easy 2.0% ...) | ...``"""

        def pct(x: float) -> str:
            return f"{100 * x:.1f}%"

        def per_slice(kind: str, stat: str) -> str:
            parts = [f"{k.split('/')[2]} {pct(v)}" for k, v in logs.items()
                     if k.startswith(f"heldout/{kind}/") and k.endswith(f"/{stat}")]
            return f" ({' '.join(parts)})" if parts else ""

        parts = [f"held-out step {step}/{total}",
                 f"accuracy {pct(logs['heldout/accuracy'])}{per_slice('difficulty', 'accuracy')}",
                 f"think {pct(logs['heldout/think_rate'])}{per_slice('difficulty', 'think_rate')}"]
        if tasks := per_slice("task", "accuracy"):
            parts.append(f"accuracy by task{tasks}")
        parts.append(f"format failures {pct(logs['heldout/format_failure_rate'])}")
        if self.metric and self.best is not None:
            parts.append(f"best {self.metric} {pct(self.best['value'])} at step {self.best['step']}"
                         + (f" (written to {BEST_DIR}/)" if saved else ""))
        return " | ".join(parts)

    def _save_best(self, step: int, logs: dict[str, float]) -> None:
        """The current weights (or adapter) + processor + best.json into best/, replacing the previous best.

        Written to ``best.tmp/`` first and swapped in: a run stopped mid-save keeps the previous best/ (a
        stop between the two renames leaves it as ``best.old/``, which the resume puts back)."""
        from audiothink.plumbing.sharding import save_full_model

        best, tmp, old = (self.run_dir / BEST_DIR, self.run_dir / f"{BEST_DIR}.tmp", self.run_dir / f"{BEST_DIR}.old")
        main = self.trainer.args.should_save
        if main and tmp.exists():
            shutil.rmtree(tmp)
        save_full_model(self.trainer, str(tmp))  # all processes (sharded weights are gathered); the main one writes
        record = {"metric": self.metric, "mode": self.mode, "value": logs[self.metric], "step": step,
                  "heldout": logs}
        if main:
            self.processor.save_pretrained(tmp)
            (tmp / BEST_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if old.exists():
                shutil.rmtree(old)
            if best.exists():
                os.replace(best, old)
            os.replace(tmp, best)
            if old.exists():
                shutil.rmtree(old)
        self.best = record


def summarise(model, processor, samples, cfg: DictConfig) -> dict:
    """Greedy held-out accuracy and think statistics (overall, by difficulty, by task), in the run's forced
    mode if it has one."""
    from audiothink.formats import force_prefill
    from audiothink.inference import generate_answers, score
    from audiothink.prompts import config_chat_template_kwargs, config_long_audio

    outputs = generate_answers(
        model,
        processor,
        samples,
        cfg.prompt,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        max_audio_seconds=cfg.model.max_audio_seconds,
        prefill=force_prefill(cfg.get("force_mode")),  # checked at start-up (check_train_config)
        chat_template_kwargs=config_chat_template_kwargs(cfg),  # the rollouts' (trainer.chat_template_kwargs)
        long_audio=config_long_audio(cfg),  # the rollouts' split of long clips (data.long_audio)
    )
    return score(samples, outputs)
