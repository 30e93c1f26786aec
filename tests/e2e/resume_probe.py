"""`python -m audiothink.train` with a record of every rollout, for tests/e2e/test_resume.py.

    RESUME_PROBE_KILL_AT=3 python -m tests.e2e.resume_probe trainer.max_steps=4 trainer.save_steps=2 ... hydra.run.dir=DIR

Runs the real entry point after wrapping, in this process only, two trainer methods:
- `_generate_and_score_completions`: each rollout appends one JSON line to `DIR/probe-rollouts.jsonl` with the
  step it was made at, the row ids, the prompt ids, the sampled completion ids and a digest of the weights it
  was sampled from. A resumed run must append, for the steps after its checkpoint, exactly the lines an
  uninterrupted run wrote.
- `training_step`: with `RESUME_PROBE_KILL_AT=k`, the process kills itself with SIGKILL when optimizer step
  k + 1 starts (steps 1..k done and logged, the checkpoint of step k or earlier on disk), as `kill -9` would.
  With `RESUME_PROBE_KILL_AFTER_ROLLOUT=k` it does so a moment later in step k + 1: once that step's rollout is
  recorded (sampled from the weights step k's update made), before its loss.
"""

from __future__ import annotations

import json
import os
import signal

import torch

from audiothink.trainer import AudioGRPOTrainer

_real_generate = AudioGRPOTrainer._generate_and_score_completions
_real_training_step = AudioGRPOTrainer.training_step


def _digest(model) -> list[float]:
    # the sum of every trainable tensor, in float64: equal digests = equal weights, in practice
    return [round(float(p.detach().double().sum()), 8) for _, p in sorted(model.named_parameters()) if p.requires_grad]


def _generate_and_score_completions(self, inputs):
    output = _real_generate(self, inputs)
    record = {
        "step": self.state.global_step,
        "ids": [row["id"] for row in inputs],
        "prompt_ids": output["prompt_ids"][output["prompt_mask"].bool()].tolist(),
        "completion_ids": output["completion_ids"][output["completion_mask"].bool()].tolist(),
        "weights": _digest(self.model),
    }
    if self.accelerator.is_main_process:
        with open(os.path.join(self.args.output_dir, "probe-rollouts.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    kill_after = os.environ.get("RESUME_PROBE_KILL_AFTER_ROLLOUT")
    if kill_after is not None and self.state.global_step == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)
    return output


def _training_step(self, model, inputs, num_items_in_batch=None):
    kill_at = os.environ.get("RESUME_PROBE_KILL_AT")
    if kill_at is not None and self.state.global_step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_training_step(self, model, inputs, num_items_in_batch)


AudioGRPOTrainer._generate_and_score_completions = _generate_and_score_completions
AudioGRPOTrainer.training_step = _training_step
torch.set_num_threads(1)  # two CPU threads can round differently from run to run; one cannot

if __name__ == "__main__":
    import runpy

    runpy.run_module("audiothink.train", run_name="__main__", alter_sys=True)
