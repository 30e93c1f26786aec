"""The run's own files (audiothink/plumbing/runfiles.py): the completions.jsonl sample callback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from audiothink.plumbing.runfiles import CompletionSample


def _rollout(trainer, tag: str) -> None:
    """What AudioGRPOTrainer leaves behind after a training rollout of 2 prompts x G = 2: TRL's _logs and the
    gathered dataset columns (a new object per rollout)."""
    trainer._logs = {"completion": [f"<answer>{tag}{i}</answer>" for i in range(4)],
                     "advantages": [0.5, -0.5, 1.0, -1.0], "rewards": {"format": [1.0, 0.0, 1.0, float("nan")]}}
    trainer._train_rollout_columns = {"id": [f"{tag}0", f"{tag}0", f"{tag}1", f"{tag}1"],
                                      "answer": ["A", "A", "B", "B"]}


def test_each_rollout_is_written_once_under_the_step_it_is_for(tmp_path):
    """Gradient accumulation 2, num_iterations 2: a rollout in the first micro-step of optimizer step k + 1 (the
    Trainer's global_step still k) is labelled k + 1, like metrics.jsonl; the steps that reuse it write nothing."""
    trainer = SimpleNamespace(reward_func_names=["format"], reward_weights=torch.tensor([1.0]), num_generations=2,
                              prefill="")
    sample = CompletionSample(trainer, prompts=2)
    args = SimpleNamespace(output_dir=str(tmp_path), logging_steps=1)
    state = SimpleNamespace(global_step=0, logging_steps=1, is_world_process_zero=True)

    _rollout(trainer, "a")
    for step in (1, 2):  # the rollout serves steps 1 and 2
        sample.on_substep_end(args, state, None)
        state.global_step = step
        sample.on_step_end(args, state, None)
    _rollout(trainer, "b")  # step 3's
    sample.on_substep_end(args, state, None)
    state.global_step = 3
    sample.on_step_end(args, state, None)

    records = [json.loads(x) for x in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [(r["step"], r["id"]) for r in records] == [(1, "a0"), (1, "a1"), (3, "b0"), (3, "b1")]
    assert records[1]["completions"][1] == {"text": "<answer>a3</answer>", "rewards": {"format": None},
                                            "reward": None, "advantage": -1.0}
    assert records[0]["completions"][0]["reward"] == 1.0 and records[0]["answer"] == "A"
