"""The files a training run writes about itself, besides metrics and checkpoints.

* ``config.yaml``: the resolved config of the run's first start. A resume writes its own config beside it,
  ``config.resumed-<step>.yaml``, and leaves the first one alone.
* ``heldout_before.json``: the held-out figures of the starting weights, written as soon as they are known.
  A resume with the same held-out settings reuses them instead of scoring the starting weights again (it
  could not: the model it starts from is the checkpoint's).
* TensorBoard: held-out accuracy and think rate before (at step 0) and after (at the last step), overall, per
  difficulty and per task, under ``heldout/…``, next to the training curves.
* ``metrics.jsonl`` (:class:`JsonlMetrics`) and ``completions.jsonl`` (:class:`CompletionSample`): every logged
  metric, and a sample of each logging step's rollouts with their rewards.
* The printed summary: overall, per difficulty and per task, before -> after.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from audiothink.formats import completion_text

log = logging.getLogger("audiothink.train")

__all__ = ["write_config", "heldout_settings", "load_before", "save_before", "log_heldout_to_tensorboard",
           "summary_lines", "JsonlMetrics", "CompletionSample", "drop_replayed", "SaveProcessor"]


def write_config(run_dir: Path, cfg: DictConfig, resumed_step: int | None) -> Path:
    """``config.yaml`` on a first start; ``config.resumed-<step>.yaml`` on a resume (the first is kept)."""
    name = "config.yaml" if resumed_step is None or not (run_dir / "config.yaml").is_file() \
        else f"config.resumed-{resumed_step}.yaml"
    path = run_dir / name
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


INTERVAL_KEYS = ("every_steps", "best_metric", "best_mode", "benchmark", "limit")


def heldout_settings(cfg: DictConfig, n_items: int) -> dict:
    """Everything that decides the held-out figures: reused figures must have been made the same way."""
    # eval.every_steps / best_* / benchmark / limit: what to score during training, not how the held-out items are
    # scored: they change no held-out figure
    scoring = {k: v for k, v in OmegaConf.to_container(cfg.eval, resolve=True).items() if k not in INTERVAL_KEYS}
    return {"items": n_items, "eval": scoring, "prompt": cfg.prompt,
            "data_eval": str(cfg.data.get("eval")), "model": str(cfg.model.path),
            "max_audio_seconds": cfg.model.max_audio_seconds,
            # only when set otherwise: figures recorded before the setting existed (truncate) stay reusable
            **({"long_audio": cfg.data.long_audio} if cfg.data.get("long_audio", "truncate") != "truncate" else {})}


def load_before(run_dir: Path, settings: dict) -> dict | None:
    """The recorded "before" figures of this run, if they were made with ``settings``."""
    path = run_dir / "heldout_before.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if record.get("settings") != settings:
        log.info("held-out: the recorded 'before' figures were made with other settings; scoring again")
        return None
    return record["before"]


def save_before(run_dir: Path, settings: dict, before: dict) -> None:
    (run_dir / "heldout_before.json").write_text(json.dumps({"settings": settings, "before": before}, indent=2) + "\n")


def _flat(result: dict) -> dict[str, dict]:
    """{"overall": stats, "difficulty=easy": stats, "task=count": stats, ...}"""
    out = {"overall": result["overall"]}
    for key in ("by_difficulty", "by_task"):
        for name, stats in result.get(key, {}).items():
            out[f"{key[3:]}={name}"] = stats
    return out


def log_heldout_to_tensorboard(logging_dir: str, summary: dict) -> Path | None:
    """``heldout/accuracy/<slice>`` and ``heldout/think_rate/<slice>``: before at step 0, after at the last step."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; only a trimmed install lacks it
        return None
    writer = SummaryWriter(log_dir=logging_dir)
    for when, step in (("before", 0), ("after", summary["steps"])):
        result = summary.get(when)
        if not result:
            continue
        for name, stats in _flat(result).items():
            writer.add_scalar(f"heldout/accuracy/{name}", stats["accuracy"], step)
            writer.add_scalar(f"heldout/think_rate/{name}", stats["think_rate"], step)
    writer.close()
    return Path(logging_dir)


def summary_lines(summary: dict) -> list[str]:
    """The end-of-run table: accuracy and think rate before -> after, overall, per difficulty, per task."""
    before, after = summary.get("before"), summary.get("after")
    lines = [f"run: {summary['run_dir']}  ({summary['steps']} steps)"]
    if not (before and after):
        return lines
    b_flat, a_flat = _flat(before), _flat(after)
    labels = {name: name.replace("difficulty=", "").replace("task=", "task ") for name in a_flat}
    width = max(22, *(len(label) + 2 for label in labels.values()))  # columns line up for any task name
    lines.append(f"{'held-out':<{width}}{'n':>5}{'accuracy':>20}{'think rate':>22}")
    for name, a in a_flat.items():
        b = b_flat.get(name)
        if b is None:
            continue
        lines.append(f"{labels[name]:<{width}}{a['n']:>5}{b['accuracy']:>12.1%} -> {a['accuracy']:<7.1%}"
                     f"{b['think_rate']:>12.1%} -> {a['think_rate']:.1%}")
    return lines


class JsonlMetrics(TrainerCallback):
    """Every logged metric, one JSON object per line: greppable, and readable without TensorBoard.

    ``resumed``: the run continues from a checkpoint. transformers' end-of-run ``train_loss`` then divides the
    losses of this process's steps by *all* steps (``_total_loss_scalar / global_step``), a wrong mean; the
    record written here holds the mean over every step of the run instead, from the ``loss`` records in the
    file (each the mean of its logging window, weighted by the window's steps).
    """

    def __init__(self, path: Path, resumed: bool = False):
        self.path = Path(path)
        self.resumed = resumed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if self.resumed and "train_loss" in logs:
                mean = self._mean_step_loss()
                logs = {**logs, "train_loss": mean} if mean is not None else logs
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def _mean_step_loss(self) -> float | None:
        if not self.path.is_file():
            return None
        losses = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record.get("step"), int) and isinstance(record.get("loss"), (int, float)):
                losses[record["step"]] = float(record["loss"])
        total, previous = 0.0, 0
        for step in sorted(losses):
            total += losses[step] * (step - previous)
            previous = step
        return total / previous if previous else None


class CompletionSample(TrainerCallback):
    """``completions.jsonl``: every logging step, ``prompts`` prompts with all their completions.

    One record per prompt: its question, choices, gold answer, task, difficulty and id, and for each of its
    G completions the text, each reward's value, the weighted total and the advantage (TRL's gathered
    copies, the ones the update used). Rolled out at global step k for optimizer step k + 1, so labelled
    k + 1, like that step's line in metrics.jsonl. Each training rollout is written once, after the
    micro-step that made it (a rollout reused by later steps, ``num_iterations`` > 1, is not written again).

    `trainer`: the :class:`audiothink.trainer.AudioGRPOTrainer` it samples (like TRL's own completion
    callbacks, it reads the trainer's record of the last rollout: TRL's ``_logs``, and the gathered dataset
    columns the trainer keeps in ``_train_rollout_columns``).
    """

    def __init__(self, trainer, prompts: int = 2):
        self.trainer = trainer
        self.prompts = prompts
        self._written = None  # the columns of the rollout written last (a new object per rollout)

    def on_substep_end(self, args, state, control, **kwargs):
        # a micro-step before the optimizer step (gradient accumulation): its rollout is the coming step's
        self._write_new_rollout(args, state, state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self._write_new_rollout(args, state, state.global_step)

    def _write_new_rollout(self, args, state, step: int) -> None:
        trainer = self.trainer
        columns = getattr(trainer, "_train_rollout_columns", None)
        if columns is None or columns is self._written:
            return
        self._written = columns
        if not state.is_world_process_zero or self.prompts <= 0 or not columns:
            return
        every = state.logging_steps or args.logging_steps
        if every and step % max(int(every), 1) != 0:
            return
        texts = list(trainer._logs["completion"])
        advantages = list(trainer._logs["advantages"])
        rewards = {name: list(values) for name, values in trainer._logs["rewards"].items()}
        weights = dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist()))
        g = trainer.num_generations
        n = min(len(texts), len(advantages), len(next(iter(columns.values()))))
        path = os.path.join(args.output_dir, "completions.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            for start in range(0, min(n, self.prompts * g), g):
                row = {k: columns[k][start] for k in ("id", "question", "choices", "answer", "task", "difficulty")
                       if k in columns}
                completions = []
                for i in range(start, min(start + g, n)):
                    values = {name: (None if v[i] != v[i] else round(v[i], 4)) for name, v in rewards.items()}
                    scored = [weights[k] * v for k, v in values.items() if v is not None]
                    completions.append({
                        "text": trainer.prefill + completion_text(texts[i]),  # what the rewards read
                        "rewards": values,
                        "reward": round(sum(scored), 4) if scored else None,
                        "advantage": round(advantages[i], 4),
                    })
                f.write(json.dumps({"step": step, **row, "completions": completions}, ensure_ascii=False) + "\n")


def drop_replayed(run_dir: Path, checkpoint: str | os.PathLike) -> dict[str, int]:
    """Before a resume from ``checkpoint``: drop the run's metric and completion records of later steps.

    The interrupted run logged steps after its last checkpoint; the resumed run logs them again. Records
    are keyed by the optimizer step they belong to (``step``); those after the checkpoint's step are removed
    from ``metrics.jsonl`` and ``completions.jsonl`` (rewritten atomically). Returns the counts dropped.
    """
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state["global_step"])
    dropped = {}
    for name in ("metrics.jsonl", "completions.jsonl"):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kept, n = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record_step = json.loads(line).get("step")
            except ValueError:
                n += 1  # a line cut by the kill
                continue
            if isinstance(record_step, int) and record_step > step:
                n += 1
            else:
                kept.append(line)
        if n:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            os.replace(tmp, path)
            log.info("resume from step %d: dropped %d record(s) of later steps from %s (they run again)",
                     step, n, name)
        dropped[name] = n
    return dropped


class SaveProcessor(TrainerCallback):
    """Checkpoints carry the processor too, so any checkpoint directory loads on its own."""

    def __init__(self, processor):
        self.processor = processor

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.processor.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}")
