"""`python -m audiothink.train` with a per-rank record of every reward step, for tests/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 -m tests.dist_probe trainer.max_steps=2 ... hydra.run.dir=DIR

Runs the real entry point (`python -m audiothink.train`, hydra arguments as usual) after wrapping, in this process
only, `AudioGRPOTrainer._calculate_rewards` and `AdaptiveThink.__call__`. Each rank appends one JSON line
per reward step to `DIR/probe-rank<R>.jsonl`: its own rows (ids, completions), what the batch-wide reward
saw (the gathered completions, λ = the think share it used, the step's progress) and the gathered reward
matrix TRL turns into advantages. The training code has no hooks for this.

`DIST_PROBE_LOCAL_LAMBDA=1` swaps in the bug the test is there to catch: λ computed from the rank's own
completions only (the rank's slice of the gathered batch). tests/test_distributed.py must then fail.
"""

from __future__ import annotations

import json
import math
import os

from audiothink.formats import completion_text, parse
from audiothink.trainer import AudioGRPOTrainer
from rewards.accuracy import is_correct
from rewards.adaptive_think import AdaptiveThink, _progress, adaptive_value

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
    for p, gold, options in zip(parsed, answer, choices):
        correct = is_correct(p, gold, options)
        out.append(None if correct is None else adaptive_value(p.thinks, correct, lam, progress, base=self.base))
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


AudioGRPOTrainer._calculate_rewards = _calculate_rewards
AdaptiveThink.__call__ = _adaptive_call

if __name__ == "__main__":
    import runpy

    # exactly `python -m audiothink.train ...` (hydra finds configs/ relative to the script it runs)
    runpy.run_module("audiothink.train", run_name="__main__", alter_sys=True)
