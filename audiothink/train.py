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

from audiothink.setup import (
    JsonlMetrics,
    SaveProcessor,
    build_dataset,
    build_grpo_config,
    build_peft_config,
    build_rewards,
    check_model_path,
    forced_prefill,
    load_model_and_processor,
    register_resolvers,
    summarise,
)

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


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from audiothink.audio import AudioError
    from audiothink.data import DataError
    from audiothink.setup import ConfigError

    try:
        return train(cfg)
    except (ConfigError, DataError, AudioError) as e:
        # a problem with the user's input: the message says what and where, a traceback would bury it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def train(cfg: DictConfig) -> dict:
    import torch
    from transformers import set_seed

    from audiothink.trainer import AudioGRPOTrainer

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        # First, so that a run stopped by its own config still leaves the config behind; one writer under a
        # multi-process launch (the launchers set RANK before torch.distributed exists).
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    set_seed(cfg.seed)

    # Fail on a wrong model path now, not after the data set and trainer are built.
    check_model_path(cfg.model.path)
    prefill = forced_prefill(cfg)
    rewards, weights = build_rewards(cfg.reward)
    if not torch.cuda.is_available():
        # Without CUDA, accelerate sets up a (gloo) process group only for a run marked as a CPU run (what
        # `accelerate launch --cpu` exports): each process of `torchrun --nproc_per_node N` or
        # `accelerate launch --multi_gpu --num_processes N` would otherwise train alone, with world size 1.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    args = build_grpo_config(
        cfg.trainer, output_dir=run_dir, seed=cfg.seed, reward_weights=weights, rollout=cfg.rollout
    )
    # Building `args` set up torch.distributed: under a multi-process launch every process runs this function,
    # and the files of the run (config, final processor, summary) are written by the main process alone.
    _check_one_run_dir(run_dir)

    train_set, eval_samples = build_dataset(cfg.data, prompt=cfg.prompt, max_audio_seconds=cfg.model.max_audio_seconds)
    log.info("data: %d training rows, %d held-out items", len(train_set), len(eval_samples))
    model, processor = load_model_and_processor(cfg.model)
    log.info("model: %s (%s), %.1f M parameters", cfg.model.cls, cfg.model.path,
             sum(p.numel() for p in model.parameters()) / 1e6)

    eval_samples = eval_samples[: cfg.eval.num_samples]
    # Every rank scores the held-out set (the same items, greedy): with sharded weights (ZeRO-3, FSDP) a
    # forward pass needs all ranks; only the main process writes the result.
    before = summarise(model, processor, eval_samples, cfg) if eval_samples else None

    trainer = AudioGRPOTrainer(
        model=model,
        processor=processor,
        reward_funcs=rewards,
        args=args,
        train_dataset=train_set,
        peft_config=build_peft_config(cfg.model.lora),
        max_audio_seconds=cfg.model.max_audio_seconds,
        fast_generation=cfg.rollout.fast,
        prefill=prefill,
        callbacks=[JsonlMetrics(run_dir / "metrics.jsonl"), SaveProcessor(processor)],
    )
    resume = cfg.resume if isinstance(cfg.resume, str) else bool(cfg.resume) or None
    trainer.train(resume_from_checkpoint=resume)

    final_dir = run_dir / "final"
    trainer.save_model(str(final_dir))  # all ranks call it (sharded weights are gathered); rank 0 writes
    if args.should_save:
        processor.save_pretrained(final_dir)

    summary = {"run_dir": str(run_dir), "steps": trainer.state.global_step, "before": before}
    if eval_samples:
        summary["after"] = summarise(trainer.model, processor, eval_samples, cfg)
    if args.should_save:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _print_summary(summary)
    return summary


def _check_one_run_dir(run_dir: Path) -> None:
    """All processes of a run must write into one directory (checkpoints, resume, metrics)."""
    from accelerate.utils import gather_object

    from audiothink.setup import ConfigError

    dirs = sorted(set(gather_object([str(run_dir.resolve())])))
    if len(dirs) > 1:
        raise ConfigError(
            f"the processes of this run resolved different run directories {dirs}: "
            "pass the same hydra.run.dir=... to every node"
        )


def _print_summary(summary: dict) -> None:
    before, after = summary.get("before"), summary.get("after")
    print(f"\nrun: {summary['run_dir']}  ({summary['steps']} steps)")
    if not (before and after):
        return
    print(f"{'held-out':<16}{'accuracy':>18}{'think rate':>20}")
    rows = [("overall", before["overall"], after["overall"])]
    rows += [(k, before["by_difficulty"][k], v) for k, v in after["by_difficulty"].items()]
    for name, b, a in rows:
        print(f"{name:<16}{b['accuracy']:>8.1%} -> {a['accuracy']:<7.1%}{b['think_rate']:>10.1%} -> {a['think_rate']:.1%}")


if __name__ == "__main__":
    main()
