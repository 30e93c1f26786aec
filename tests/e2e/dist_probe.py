"""`python -m audiothink.train` with a per-rank record of every reward step, for tests/e2e/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 -m tests.e2e.dist_probe trainer.max_steps=2 ... hydra.run.dir=DIR

Runs the real entry point (`python -m audiothink.train`, hydra arguments as usual) after wrapping, in this process
only, `AudioGRPOTrainer._calculate_rewards` and `AdaptiveThink.__call__`. Each rank appends one JSON line
per reward step to `DIR/probe-rank<R>.jsonl`: its own rows (ids, completions), what the batch-wide reward
saw (the gathered completions, λ = the think share it used, the step's progress) and the gathered reward
matrix TRL turns into advantages. The training code has no hooks for this.

`DIST_PROBE_LOCAL_LAMBDA=1` swaps in the bug the test is there to catch: λ computed from the rank's own
completions only (the rank's slice of the gathered batch). tests/e2e/test_distributed.py must then fail.

At its first rollout of a run started from step 0, each rank also writes what the sharded-engine test
(tests/e2e/test_sharded.py) checks: `probe-engine-rank<R>.json`, the engine that trains and how much of the
model this process holds (FSDP2: its DTensor shards; ZeRO-3: its partitions), and `probe-rollout-rank<R>.pt`,
a greedy rollout of the batch's prompts through TRL's own generation path (the model as the engine holds it:
weights gathered for every decode step), with its inputs, to compare with an unsharded model.
"""

from __future__ import annotations

import copy
import json
import math
import os

import torch

from audiothink.formats import completion_text, parse
from audiothink.plumbing.sharding import running_engine
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards.accuracy import is_correct
from audiothink.rewards.adaptive_think import AdaptiveThink, _progress, adaptive_value

_seen: list[dict] = []  # what AdaptiveThink saw during the current _calculate_rewards call

_real_calculate_rewards = AudioGRPOTrainer._calculate_rewards
_real_adaptive_call = AdaptiveThink.__call__


def _adaptive_call(self, completions, answer, choices, trainer_state=None, **kwargs):
    if os.environ.get("DIST_PROBE_LOCAL_LAMBDA") == "1":
        values = _rank_local_lambda(self, completions, answer, choices, trainer_state)
    else:
        values = _real_adaptive_call(self, completions, answer, choices, trainer_state=trainer_state, **kwargs)
    _seen.append(
        {
            "lambda": self.last_think_share,
            "progress": _progress(trainer_state) if self.balance else 1.0,
            "completions": [completion_text(c) for c in completions],
            "answer": list(answer),
            "choices": [list(c) for c in choices],
        }
    )
    return values


def _rank_local_lambda(self, completions, answer, choices, trainer_state):
    """The deliberate bug: λ from this rank's slice of the gathered batch, as a per-rank reward would see it."""
    from accelerate import PartialState

    state = PartialState()
    n = len(completions) // state.num_processes
    parsed = [parse(c) for c in completions]
    local = parsed[state.process_index * n : (state.process_index + 1) * n]
    lam = sum(p.thinks for p in local) / len(local)
    self.last_think_share = lam
    progress = _progress(trainer_state) if self.balance else 1.0
    out = []
    for c, p, gold, options in zip(completions, parsed, answer, choices):
        correct = is_correct(c, gold, options)
        thought = p.thinks or not p.well_formed  # as the real reward pays
        out.append(None if correct is None else adaptive_value(thought, correct, lam, progress, base=self.base))
    return out


def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
    _seen.clear()
    rewards = _real_calculate_rewards(self, inputs, prompts, completions, completion_ids_list)
    weights = self.reward_weights.tolist()
    rows = [[None if math.isnan(v) else v for v in row] for row in rewards.tolist()]
    record = {
        "rank": self.accelerator.process_index,
        "world_size": self.accelerator.num_processes,
        "step": self.state.global_step,
        "names": list(self.reward_func_names),
        "weights": weights,
        "local_ids": [row["id"] for row in inputs],
        "local_completions": [completion_text(c) for c in completions],
        "adaptive_calls": list(_seen),
        "rewards": rows,
        # TRL's total: the weighted sum over rewards, a None counting as 0 (nansum)
        "total": [sum(w * v for w, v in zip(weights, row) if v is not None) for row in rows],
    }
    path = os.path.join(self.args.output_dir, f"probe-rank{record['rank']}.jsonl")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return rewards


_real_generate_single_turn = AudioGRPOTrainer._generate_single_turn
_rollout_recorded = False


def _held_parameters(model) -> dict[str, int]:
    """Parameters this process holds, and those of the whole model (FSDP2 DTensors, ZeRO-3 partitions)."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        if isinstance(p, DTensor):
            local, total = local + p.to_local().numel(), total + p.numel()
        elif hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
        else:
            local, total = local + p.numel(), total + p.numel()
    return {"local": local, "total": total}


def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
    global _rollout_recorded
    if not _rollout_recorded and self.state.global_step == 0 and self.model.training:
        _rollout_recorded = True
        rank = self.accelerator.process_index
        engine = {"engine": running_engine(self.accelerator), "parameters": _held_parameters(self.model_wrapped)}
        with open(os.path.join(self.args.output_dir, f"probe-engine-rank{rank}.json"), "w") as f:
            json.dump(engine, f)
        # the same call TRL makes for this batch, greedy: no sampling, so the real rollout below is unchanged
        sampling, self.generation_config = self.generation_config, copy.deepcopy(self.generation_config)
        self.generation_config.do_sample = False
        try:
            greedy, _ = _real_generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations)
        finally:
            greedy_config, self.generation_config = self.generation_config, sampling
        torch.save(
            {
                "prompt_ids": prompt_ids,
                "features": {k: v.detach().cpu() for k, v in multimodal_fields.items()},
                "generation_config": greedy_config.to_dict(),
                "completion_ids": greedy,
            },
            os.path.join(self.args.output_dir, f"probe-rollout-rank{rank}.pt"),
        )
    return _real_generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images)


AudioGRPOTrainer._calculate_rewards = _calculate_rewards
AudioGRPOTrainer._generate_single_turn = _generate_single_turn
AdaptiveThink.__call__ = _adaptive_call

if __name__ == "__main__":
    import runpy

    # exactly `python -m audiothink.train ...` (hydra finds configs/ relative to the script it runs)
    runpy.run_module("audiothink.train", run_name="__main__", alter_sys=True)
