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

With ``eval.benchmark`` (a benchmark config's name, ``toy``, ``mmau_test_mini``, ``mmar``, or the path of such a
yaml file) the benchmark's items (the first ``eval.limit``) are scored at the same steps through the evaluation
code (:func:`audiothink.benchmarks.runner.answer_items`, the official rule of
:func:`audiothink.benchmarks.report.summarise`), besides the held-out items (or instead of them, with
``eval.num_samples=0``), and logged as ``benchmark/<name>/accuracy``, ``benchmark/<name>/think_rate``,
``benchmark/<name>/format_failure_rate`` and per slice ``benchmark/<name>/<dimension>/<value>/accuracy|think_rate``
(:func:`benchmark_logs`), everywhere the ``heldout/…`` figures go; ``eval.best_metric`` may name one. Each
scoring's records go to ``<run>/benchmark/<name>/predictions-step-<N>.jsonl``.

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
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig
from transformers import TrainerCallback

from audiothink.plumbing.errors import ConfigError
# the metric names (OVERALL_STATS: the figures of inference.score logged for all items, SLICE_STATS for each slice)
# and eval.benchmark's config are read by the config checks too, which run before transformers loads (a bad value
# stops in seconds): they live in audiothink/plumbing/validate.py
from audiothink.plumbing.validate import BENCHMARK_PREFIX, OVERALL_STATS, SLICE_STATS, benchmark_config, metric_problem

log = logging.getLogger("audiothink.heldout")

__all__ = ["OVERALL_STATS", "SLICE_STATS", "metric_problem", "heldout_logs", "check_heldout_eval", "shard",
           "HeldoutEval", "attach", "BEST_DIR", "BEST_RECORD", "BENCHMARK_PREFIX", "benchmark_config",
           "benchmark_logs"]

BEST_DIR, BEST_RECORD = "best", "best.json"


def _tag(value: object) -> str:
    """A slice or benchmark name as one segment of a metric key ('/' would split it)."""
    return str(value).replace("/", "-")


def benchmark_logs(name: str, summary: dict) -> dict[str, float]:
    """:func:`audiothink.benchmarks.report.summarise`'s result as flat ``benchmark/<name>/…`` metrics (overall, then
    each value of each of the benchmark's dimensions); figures without items (None) are left out."""
    prefix = f"{BENCHMARK_PREFIX}/{_tag(name)}"
    logs = {f"{prefix}/{stat}": float(summary["overall"][stat]) for stat in OVERALL_STATS
            if summary["overall"].get(stat) is not None}
    for dim, groups in summary.get("by", {}).items():
        for value, stats in groups.items():
            for stat in SLICE_STATS:
                if stats.get(stat) is not None:
                    logs[f"{prefix}/{_tag(dim)}/{_tag(value)}/{stat}"] = float(stats[stat])
    return logs


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


def check_heldout_eval(eval_cfg: DictConfig, samples, bench=None) -> None:
    """After the data is read (before the model loads): ``eval.every_steps`` needs held-out items or a benchmark
    (``bench``, :func:`audiothink.evaluate.load_training_benchmark`), and a per-slice ``eval.best_metric`` a slice they have."""
    every = eval_cfg.get("every_steps")
    if every is None:
        return
    if not samples and bench is None:
        raise ConfigError(f"eval.every_steps={every}: the data has no held-out items to score (data.eval, or the "
                          "data's held-out share)")
    metric = eval_cfg.get("best_metric")
    if isinstance(metric, str) and metric.startswith("heldout/") and not samples:
        raise ConfigError(f"eval.best_metric={metric}: no held-out items are scored (eval.num_samples=0); name a "
                          f"{BENCHMARK_PREFIX}/{bench.name}/... figure")
    if isinstance(metric, str) and metric.startswith("heldout/") and metric.count("/") == 3:
        name = metric.rpartition("/")[0].partition("/")[2]
        have = _slices(samples)
        if name not in have:
            raise ConfigError(f"eval.best_metric={metric}: the held-out items have no slice {name} (they have "
                              f"{', '.join(sorted(have))})")
    if isinstance(metric, str) and metric.startswith(f"{BENCHMARK_PREFIX}/") and metric.count("/") == 4:
        name = "/".join(metric.split("/")[2:4])
        have = {f"{_tag(d)}/{_tag(g[d])}" for g in bench.groups for d in bench.dimensions}
        if name not in have:
            raise ConfigError(f"eval.best_metric={metric}: {bench.name}'s items have no slice {name} (they have "
                              f"{', '.join(sorted(have))})")


def shard(n: int, rank: int, world: int) -> list[int]:
    """The item indices process ``rank`` of ``world`` scores: consecutive shares of equal size, the last item
    repeated to fill the last ones (every process runs the same number of generate calls: under the sharded
    engines each forward pass needs all of them). One process: ``range(n)``, in order."""
    per = math.ceil(n / world) if n else 0
    padded = list(range(n)) + [n - 1] * (per * world - n)
    return padded[rank * per : (rank + 1) * per]


def attach(trainer, processor, samples, cfg: DictConfig, run_dir, bench=None) -> "HeldoutEval | None":
    """With ``eval.every_steps`` set: a :class:`HeldoutEval` added to ``trainer``'s callbacks (else nothing);
    ``bench``: eval.benchmark's benchmark (:func:`audiothink.evaluate.load_training_benchmark`), scored with the held-out items."""
    if cfg.eval.get("every_steps") is None or not (samples or bench is not None):
        return None
    callback = HeldoutEval(trainer, processor, samples, cfg, run_dir, bench=bench)
    trainer.add_callback(callback)
    return callback


class HeldoutEval(TrainerCallback):
    """Scores the held-out ``samples`` every ``cfg.eval.every_steps`` optimizer steps; keeps ``<run>/best/``.

    ``trainer``: the :class:`audiothink.trainer.AudioGRPOTrainer` (its model, as the engine holds it, and its
    callbacks, which get the figures); ``cfg``: the run's config (prompt, eval.*, model.max_audio_seconds,
    force_mode, as :func:`audiothink.heldout_eval.summarise` reads them); ``bench``: a benchmark scored at the same
    steps (eval.benchmark), or None.
    """

    def __init__(self, trainer, processor, samples, cfg: DictConfig, run_dir: str | os.PathLike, bench=None):
        self.trainer, self.processor, self.samples, self.cfg = trainer, processor, list(samples), cfg
        self.bench = bench
        if bench is not None:
            from audiothink.audio import audio_info

            # longest audio first, as python -m audiothink.evaluate orders them (an out-of-memory batch at once)
            seconds = [sum(audio_info(p, row_id=s.id)[0] for p in s.audio) for s in bench.samples]
            self.bench_order = sorted(range(len(bench)), key=lambda i: (-seconds[i], i))
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

    @contextmanager
    def _generation_model(self):
        """The model as the engine holds it, ready to generate: gathered where TRL's rollouts gather it,
        activation checkpointing off, no gradients."""
        import torch
        from trl.models import unwrap_model_for_generation

        trainer = self.trainer
        with (
            unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
            as model,
            torch.no_grad(),
            trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
        ):
            yield model

    def _generate(self, indices: list[int]) -> list[str]:
        """Greedy answers for ``indices``, with the model as the engine holds it (:meth:`_generation_model`),
        exactly as :func:`audiothink.heldout_eval.summarise`."""
        from audiothink.formats import force_prefill
        from audiothink.inference import generate_answers
        from audiothink.prompts import config_chat_template_kwargs, config_long_audio

        cfg = self.cfg
        with self._generation_model() as model:
            return generate_answers(
                model, self.processor, [self.samples[i] for i in indices], cfg.prompt,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                max_audio_seconds=cfg.model.max_audio_seconds, prefill=force_prefill(cfg.get("force_mode")),
                chat_template_kwargs=config_chat_template_kwargs(cfg), long_audio=config_long_audio(cfg),
            )

    def score(self, args, state, control) -> dict[str, float]:
        """Score the held-out items (and eval.benchmark's) now; log the figures; update best/. Returns the logged
        figures."""
        from audiothink.inference import score

        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        logs: dict[str, float] = {}
        if self.samples:
            mine = shard(len(self.samples), rank, world)
            pairs = list(zip(mine, self._generate(mine)))
            if world > 1:
                from accelerate.utils import gather_object

                pairs = gather_object(pairs)
            answers = dict(pairs)  # the repeated filler items collapse
            logs.update(heldout_logs(score(self.samples, [answers[i] for i in range(len(self.samples))])))
        if self.bench is not None:
            logs.update(self._score_benchmark(state.global_step))
        self.scorings += 1
        saved = self._better(logs.get(self.metric, math.nan)) if self.metric else False
        if saved:
            self._save_best(state.global_step, logs)
        self._log(args, state, control, logs, saved)
        return logs

    def _score_benchmark(self, step: int) -> dict[str, float]:
        """eval.benchmark's items, split between the processes as the held-out items are, answered through the
        evaluation code and scored with its official rule; the records into
        ``<run>/benchmark/<name>/predictions-step-<step>.jsonl`` (main process). Returns the benchmark/… figures."""
        from audiothink.benchmarks.report import summarise as summarise_benchmark
        from audiothink.benchmarks.runner import GenerationSettings, answer_items
        from audiothink.prompts import config_chat_template_kwargs, config_long_audio

        cfg, bench, accelerator = self.cfg, self.bench, self.trainer.accelerator
        settings = GenerationSettings(
            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
            max_audio_seconds=cfg.model.max_audio_seconds, do_sample=False, force_mode=cfg.get("force_mode"),
            chat_template_kwargs=config_chat_template_kwargs(cfg) or None, long_audio=config_long_audio(cfg))
        mine = [self.bench_order[j] for j in shard(len(bench), accelerator.process_index, accelerator.num_processes)]
        with self._generation_model() as model:
            pairs = list(zip(mine, answer_items(model, self.processor, bench, cfg.prompt, mine, settings)))
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            pairs = gather_object(pairs)
        records = {bench.keys[i]: record for i, record in pairs}  # the repeated filler items collapse
        if self.trainer.args.should_save:
            folder = self.run_dir / BENCHMARK_PREFIX / _tag(bench.name)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"predictions-step-{step}.jsonl", "w", encoding="utf-8") as f:
                for key in bench.keys:
                    f.write(json.dumps(records[key], ensure_ascii=False) + "\n")
        return benchmark_logs(bench.name, summarise_benchmark(bench, records))

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

        parts = [f"held-out step {step}/{total}"]
        if "heldout/accuracy" in logs:
            parts += [f"accuracy {pct(logs['heldout/accuracy'])}{per_slice('difficulty', 'accuracy')}",
                      f"think {pct(logs['heldout/think_rate'])}{per_slice('difficulty', 'think_rate')}"]
            if tasks := per_slice("task", "accuracy"):
                parts.append(f"accuracy by task{tasks}")
            parts.append(f"format failures {pct(logs['heldout/format_failure_rate'])}")
        if self.bench is not None:
            name = _tag(self.bench.name)
            prefix = f"{BENCHMARK_PREFIX}/{name}"
            slices = " ".join(f"{k.split('/')[3]} {pct(v)}" for k, v in logs.items()
                              if k.startswith(f"{prefix}/difficulty/") and k.endswith("/accuracy"))
            figures = [f"accuracy {pct(logs[f'{prefix}/accuracy'])}" + (f" ({slices})" if slices else "")]
            for stat, label in (("think_rate", "think"), ("format_failure_rate", "format failures")):
                if f"{prefix}/{stat}" in logs:
                    figures.append(f"{label} {pct(logs[f'{prefix}/{stat}'])}")
            parts.append(f"{prefix} " + " ".join(figures))
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
