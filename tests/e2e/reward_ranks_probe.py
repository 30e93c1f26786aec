"""Two ranks train the toy with a batch-wide reward that samples, for tests/e2e/test_reward_api_ranks.py.

    torchrun --standalone --nproc_per_node 2 -m tests.e2e.reward_ranks_probe OUT TRAIN_JSONL MODE

The rewards: `format`, and `sampled`, a batch-wide reward written like a judge-based one: its `local` part asks a
judge on each rank (the judge fails on rank + 1 items per step: `judge/failures` is 1 on rank 0, 2 on rank 1),
and its `__call__` draws its values from a generator seeded by the process id, as a judge that samples would
(computed on each rank, the ranks would disagree). Every call of `sampled.__call__` appends a line to
`OUT/sampled-calls.jsonl`. Each rank appends, per reward step, its rows' clip paths and the gathered reward
matrix to `OUT/rewards-rank<R>.jsonl`; the main process writes each logging step's metrics to `OUT/logs.jsonl`.

MODE:
- `count`: 2 steps, then a third in which `sampled.__call__` raises in rank 0's process (as a flaky API does);
- `local`: the first step's `sampled.local` raises on rank 1.
A rank that stops with an exception writes `OUT/error-rank<R>.json` (type, message, time) and raises it again.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from audiothink.plumbing.sharding import cpu_process_settings

RANK = int(os.environ.get("RANK", "0"))
MAX_AUDIO_SECONDS = 0.85  # toy clips are 0.7-1.0 s: some are cut, a different number on each rank
MAIN_ERROR = "sampled: the judge API answered 429 (quota exhausted) at step 2"
LOCAL_ERROR = "sampled.local: the judge API refused the request of rank 1"


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def main(out: Path, train: str, mode: str) -> None:
    from transformers import TrainerCallback

    from audiothink.judge import Judge
    from audiothink.rewards import Format
    from audiothink.toy import TOY_MODEL_DIR
    from tests.reward_testing import toy_trainer

    class HalfDeafJudge(Judge):
        """Fails on the first rank + 1 items of every call (counted in judge/failures), 0.5 for the others."""

        async def _score(self, task, items):
            failed = min(RANK + 1, len(items))
            return [None] * failed + [0.5] * (len(items) - failed), failed

    class Sampled:
        __name__ = "sampled"
        batch_wide = True

        def __init__(self):
            self.judge = HalfDeafJudge()
            self.rng = random.Random(os.getpid())  # each process draws its own values

        async def local(self, completions, trainer_state=None, log_metric=None, **columns):
            if mode == "local" and RANK == 1:
                raise RuntimeError(LOCAL_ERROR)
            return await self.judge.score("listens", [{"think": c} for c in completions], log_metric=log_metric)

        def __call__(self, completions, local_scores, trainer_state, **columns):
            step = trainer_state.global_step
            _append(out / "sampled-calls.jsonl", {"rank": RANK, "step": step, "n": len(completions)})
            if mode == "count" and step == 2 and RANK == 0:
                raise ValueError(MAIN_ERROR)
            return [self.rng.random() for _ in completions]

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                _append(out / "logs.jsonl", {"step": state.global_step, **logs})

    trainer = toy_trainer(TOY_MODEL_DIR, {"train": train}, out, [Format(), Sampled()],
                          max_steps=3 if mode == "count" else 1, n_rows=16,
                          max_audio_seconds=MAX_AUDIO_SECONDS)
    trainer.add_callback(Logs())
    calculate = type(trainer)._calculate_rewards

    def recording(self, inputs, prompts, completions, completion_ids_list):
        rewards = calculate(self, inputs, prompts, completions, completion_ids_list)
        _append(out / f"rewards-rank{RANK}.jsonl", {
            "step": self.state.global_step, "audio": [list(row["audio"]) for row in inputs],
            "rewards": [[None if v != v else v for v in row] for row in rewards.tolist()],
        })
        return rewards

    trainer._calculate_rewards = recording.__get__(trainer)
    trainer.train()


if __name__ == "__main__":
    out_dir, train_file, run_mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    cpu_process_settings()  # one gloo group for the torchrun processes (as `python -m audiothink.train` does)
    try:
        main(out_dir, train_file, run_mode)
    except Exception as e:
        with open(out_dir / f"error-rank{RANK}.json", "w", encoding="utf-8") as f:
            json.dump({"type": type(e).__name__, "message": str(e), "time": time.time()}, f)
        raise
