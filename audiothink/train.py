"""Train an audio language model with GRPO to decide when (and how) to think.

    python -m audiothink.train reward=adaptive                 # the embedded toy, CPU, a few minutes
    python -m audiothink.train model=qwen2_audio_7b data=jsonl data.train=/data/avqa/train.jsonl

Reads top to bottom: compose config -> model -> data -> rewards -> score held-out before -> GRPO ->
save -> score held-out after -> summary. The run directory gets the resolved config, metrics (TensorBoard
and metrics.jsonl), completions.jsonl (a sample of rollouts with their rewards), checkpoints, the final
weights or adapter with the processor, and summary.json.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from audiothink import CONFIG_DIR
from audiothink.sources import build_dataset
from audiothink.grpo_config import build_grpo_config
from audiothink.loading import build_peft_config, check_model_path, load_model_and_processor, load_model_config, load_processor
from audiothink.plumbing.cli import register_resolvers
from audiothink.export import parameter_line, write_model_card
from audiothink.formats import force_prefill
from audiothink.plumbing.sharding import cpu_process_settings, save_full_model, whole_weights
# The trainer, the rewards, the held-out scoring and the run files (TRL, PEFT, vLLM where installed: ~10 s) are
# imported in train() once the config has passed its checks: a bad value stops in seconds.

log = logging.getLogger("audiothink.train")
register_resolvers()


def launch_time(pattern: str) -> str:
    """The time the run was launched, for the run directory's name (`${launch_time:%Y-%m-%d_%H-%M-%S}`).

    Under a multi-process launcher (torchrun, accelerate launch) every rank resolves the name itself, and
    `${now:...}` differs between ranks that start either side of a second: they would write two run
    directories. The ranks of one node are children of the same launcher process, so its start time names
    one directory for all of them. (Ranks on other nodes have other launchers: pass hydra.run.dir there.)
    """
    from datetime import datetime

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        import psutil  # an accelerate dependency

        return datetime.fromtimestamp(psutil.Process(os.getppid()).create_time()).strftime(pattern)
    return datetime.now().strftime(pattern)


if not OmegaConf.has_resolver("launch_time"):
    # use_cache: one value per pattern for the process, like hydra's own `now`
    OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from audiothink.plumbing.errors import USER_ERRORS
    from audiothink.plumbing.rundir import disk_fault, guard_log_files

    guard_log_files()
    try:
        return train(cfg)
    except Exception as e:  # noqa: BLE001 - anything else is raised again as it was
        # a problem with the user's input: the message says what and where, a traceback would bury it; the same
        # for a disk that fills up (or turns read-only) under the run: the file, and what to do
        fault = None if isinstance(e, USER_ERRORS) else disk_fault(e, cfg.output_dir)
        if fault is None and not isinstance(e, USER_ERRORS):
            raise
        fix = "make the disk writable again" if "[Errno 30]" in (fault or "") else "free space"
        print(f"error: {e}" if fault is None else f"error: {fault}: {fix} (or choose another disk with "
              "hydra.run.dir=…), then start again, or continue from the last checkpoint with resume=true",
              file=sys.stderr)
        if int(os.environ.get("RANK", "0")) == 0:
            # no stub run per typo: the new folder goes unless something was trained in it; a crash (not a user
            # error) keeps its folder and train.log for the traceback
            from audiothink.plumbing.rundir import remove_if_unused

            remove_if_unused(cfg.output_dir, ("checkpoint-*", "metrics.jsonl", "final"))
        sys.exit(2)


def train(cfg: DictConfig) -> dict:
    from audiothink.plumbing.console import setup_console
    from audiothink.plumbing.rundir import claim, disk_fault
    from audiothink.plumbing.validate import check_dataset_size, check_train_config, world_size

    setup_console(libraries=False)  # transformers' and torch's records: routed below, before their first use
    if cfg.resume not in (None, False):
        from audiothink.plumbing.resume_config import resumed_config

        cfg = resumed_config(cfg, Path(cfg.output_dir))  # the run's own config.yaml, safe overrides on top
    # Every value that can be judged alone, in seconds: nothing is loaded (or imported) before this passes.
    check_train_config(cfg)
    check_model_path(cfg.model.path)  # a wrong model path (a hub id, an adapter, no folder) too, before any folder
    from audiothink.plumbing.checkpoints import (check_resume_adapter, check_resume_processes, checkpoint_step,
                                                 resume_checkpoint)

    resume = cfg.resume not in (None, False)
    run_dir = claim(Path(cfg.output_dir), resume=resume)  # refuses a folder that holds another run
    resume_from = resume_checkpoint(run_dir, cfg.resume)  # resume=true without a checkpoint fails here
    if resume_from:
        check_resume_adapter(resume_from, cfg.model.lora)  # the checkpoint's LoRA (or none) is model.lora's
        check_resume_processes(resume_from, world_size())  # saved by as many processes as this launch has
    resumed_step = checkpoint_step(resume_from) if resume_from else None
    # The run folder and the checkpoint passed their checks too: now the trainer's stack.
    setup_console()
    from transformers import set_seed

    from audiothink import heldout_eval
    from audiothink.judge.watch import JudgeWatch, check_judge_used, probe_judges
    from audiothink.plumbing import runfiles
    from audiothink.plumbing.progress import use_run_console
    from audiothink.reward_api import build_rewards
    from audiothink.trainer import AudioGRPOTrainer

    main_process = int(os.environ.get("RANK", "0")) == 0  # the launchers set RANK before torch.distributed exists
    if main_process:
        # First, so that the config is on disk before anything can fail (a run stopped by a user error before it
        # trained removes its new folder again: main()); a resume keeps the
        # first start's config.yaml and writes its own beside it.
        runfiles.write_config(run_dir, cfg, resumed_step)
    set_seed(cfg.seed)
    if cfg.cpu_threads is not None:
        import torch

        torch.set_num_threads(cfg.cpu_threads)

    if cfg.rollout.engine == "vllm":  # the toy: its 30 s-window copy, which stock vLLM accepts (audiothink/toy/window30.py)
        from audiothink.toy.window30 import vllm_model_path

        cfg.model.path = vllm_model_path(cfg.model.path)
    prefill = force_prefill(cfg.get("force_mode"))  # checked above (check_train_config)
    rewards, weights = build_rewards(cfg.reward)
    check_judge_used(cfg.get("judge"), rewards)  # judge=hf/openai with no reward asking it is refused
    probe_judges(rewards)  # one short request per judge task: a judge that cannot answer stops the run here
    # Without CUDA: the processes of `torchrun` / `accelerate launch` (DDP, FSDP2, DeepSpeed) form one gloo
    # group and train with the engine the launcher asked for (audiothink/plumbing/sharding.py); a no-op on GPUs.
    engine_fields = cpu_process_settings()
    if "wandb" in (cfg.trainer.get("report_to") or []):
        # W&B through transformers' integration: its files in the run folder, one project for audiothink runs
        # (WANDB_MODE=offline works without a network; `wandb sync <run>/wandb/offline-run-*` uploads later)
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", "audiothink")
    args = build_grpo_config(
        cfg.trainer, output_dir=run_dir, seed=cfg.seed, reward_weights=weights, rollout=cfg.rollout,
        engine=engine_fields,
    )
    # Building `args` set up torch.distributed: under a multi-process launch every process runs this function,
    # and the files of the run (config, final processor, summary) are written by the main process alone.
    _check_one_run_dir(run_dir)

    # The processor first (seconds): rows are checked against it (audio long enough for an audio token, prompt
    # length in tokens, no control tokens in text) before the model is loaded; config.json gives the model type
    # (the audio tokens a clip needs) and its context (the prompt limit).
    processor = load_processor(cfg.model)
    train_set, eval_samples = build_dataset(cfg.data, prompt=cfg.prompt, max_audio_seconds=cfg.model.max_audio_seconds,
                                            processor=processor, model_config=load_model_config(cfg.model),
                                            max_completion_length=cfg.trainer.max_completion_length,
                                            prefill=prefill, chat_template_kwargs=args.chat_template_kwargs)
    check_dataset_size(len(train_set), cfg.trainer)
    log.info("data: %d training rows, %d held-out items", len(train_set), len(eval_samples))
    # eval.benchmark: its items and audio checked now, before the model loads
    from audiothink.audio import short_clip_check
    from audiothink.evaluate import load_training_benchmark

    bench = (load_training_benchmark(cfg, short_clip_check(cfg.model)) if cfg.eval.get("benchmark")
             else None)
    heldout_eval.check_heldout_eval(cfg.eval, eval_samples[: cfg.eval.num_samples], bench)  # eval.every_steps: items
    model, processor = load_model_and_processor(cfg.model, processor)

    eval_samples = eval_samples[: cfg.eval.num_samples]
    # The starting weights' held-out figures; a resume reuses the recorded ones (it starts from a checkpoint).
    # Every rank scores (greedy, the same items): sharded weights (ZeRO-3, FSDP) need all ranks for a forward.
    settings = runfiles.heldout_settings(cfg, len(eval_samples))
    before = runfiles.load_before(run_dir, settings) if resume_from else None
    if before is None and eval_samples:
        log.info("held-out: scoring %d items with the starting weights", len(eval_samples))
        with whole_weights(model):  # ZeRO-3 partitions the weights as they load
            before = heldout_eval.summarise(model, processor, eval_samples, cfg)
        if main_process:
            runfiles.save_before(run_dir, settings, before)

    if args.ddp_find_unused_parameters is None:
        # transformers' DDP default without activation checkpointing is True: DDP then walks the autograd graph
        # every step and every process warns that it found nothing unused. Only the Omni thinker's vision
        # encoder idles here, and with LoRA nothing but the adapters (on the language model) trains.
        from audiothink.models import idle_trainable_parameters

        args.ddp_find_unused_parameters = cfg.model.lora is None and idle_trainable_parameters(model)
    trainer = AudioGRPOTrainer(
        model=model,
        processor=processor,
        reward_funcs=rewards,
        args=args,
        train_dataset=train_set,
        peft_config=build_peft_config(cfg.model.lora, model),
        max_audio_seconds=cfg.model.max_audio_seconds,
        long_audio=cfg.data.long_audio,  # the row checks' and the held-out scoring's split of long clips too
        fast_generation=cfg.rollout.fast,
        prefill=prefill,
        compile_cache_dir=cfg.rollout.get("compile_cache_dir"),
        completion_prompts=cfg.log.completion_prompts,
        callbacks=[runfiles.JsonlMetrics(run_dir / "metrics.jsonl", resumed=bool(resume_from)),
                   runfiles.SaveProcessor(processor),
                   JudgeWatch(rewards)],
    )
    use_run_console(trainer)  # health/* metrics and one progress line per logging step (audiothink/plumbing/progress.py)
    # after the trainer is built: TRL wraps the model with the LoRA adapter (peft_config) in its constructor
    log.info("model: %s (%s), %s", cfg.model.cls.rsplit(".", 1)[-1], cfg.model.path, parameter_line(trainer.model))
    # eval.every_steps: held-out scoring every N steps, heldout/* curves, <run>/best/ (audiothink/heldout_eval.py)
    heldout_eval.attach(trainer, processor, eval_samples, cfg, run_dir, bench)
    if resume_from and resumed_step >= args.max_steps:
        # The Trainer would train one more step; there is nothing left to train.
        log.info("run complete: %s is at step %d of trainer.max_steps=%d; nothing to train (raise "
                 "trainer.max_steps to train on)", Path(resume_from).name, resumed_step, args.max_steps)
        trainer.load_checkpoint_weights(resume_from)
    else:
        if resume_from and args.should_save:
            # The steps after the checkpoint run again: their records of the interrupted run go.
            runfiles.drop_replayed(run_dir, resume_from)
        trainer.train(resume_from_checkpoint=resume_from)

    final_dir = run_dir / "final"
    save_full_model(trainer, str(final_dir))  # all ranks call it (sharded weights are gathered); rank 0 writes
    if args.should_save:
        processor.save_pretrained(final_dir)

    summary = {"run_dir": str(run_dir), "steps": trainer.state.global_step, "before": before}
    if eval_samples:
        log.info("held-out: scoring %d items with the trained weights", len(eval_samples))
        summary["after"] = heldout_eval.summarise(trainer.model, processor, eval_samples, cfg)
    if args.should_save:
        # Figures only, no path and no time: two runs with the same seed and config write identical files.
        figures = {k: v for k, v in summary.items() if k != "run_dir"}
        (run_dir / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
        write_model_card(final_dir, run_dir)  # PEFT's README.md there is an empty template
        if "tensorboard" in (args.report_to or []):
            # into the training curves' event folder, so that TensorBoard shows them side by side
            tb = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TensorBoardCallback"), None)
            runfiles.log_heldout_to_tensorboard(getattr(tb, "logging_dir", None) or str(run_dir / "runs"), summary)
        if cfg.log.plots:
            from audiothink.plot import plot_run

            try:
                log.info("plots: %s", ", ".join(p.name for p in plot_run(run_dir)))
            except OSError as e:
                fault = disk_fault(e, run_dir)
                if fault is None:
                    raise
                # the run itself is complete (summary.json is written): the plots can be drawn later
                log.warning("plots: not written: %s (draw them later: python -m audiothink.plot %s)", fault, run_dir)
        log.info("\n".join(["", *runfiles.summary_lines(summary)]))
    return summary


def _check_one_run_dir(run_dir: Path) -> None:
    """All processes of a run must write into one directory (checkpoints, resume, metrics)."""
    from accelerate.utils import gather_object

    from audiothink.plumbing.errors import ConfigError

    dirs = sorted(set(gather_object([str(run_dir.resolve())])))
    if len(dirs) > 1:
        raise ConfigError(
            f"the processes of this run resolved different run directories {dirs}: "
            "pass the same hydra.run.dir=... to every node"
        )


if __name__ == "__main__":
    from audiothink.plumbing.cli import run_checked

    run_checked("train", main)  # unknown keys and options: one line, a suggestion, exit 2
