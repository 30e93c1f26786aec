"""`python -m audiothink.train` with a per-process record of the held-out items each scoring during training
generated answers for, for tests/e2e/test_heldout_eval.py.

    torchrun --standalone --nproc_per_node 2 -m tests.e2e.heldout_probe eval.every_steps=1 ... hydra.run.dir=DIR

Wraps, in this process only, `HeldoutEval.score` (which step is being scored), `inference.generate_answers` (the
real generation of the held-out answers) and the evaluation code's `generate_batch` (`benchmarks.runner`, the
answers of eval.benchmark's items): each call made inside a scoring appends one JSON line to
`DIR/heldout-probe-rank<R>.jsonl` with the step, what was scored (kind: heldout or benchmark) and the items' ids.
The training code has no hooks for this.
"""

from __future__ import annotations

import json
import os

from audiothink import inference
from audiothink.benchmarks import runner
from audiothink.heldout_eval import HeldoutEval

_real_score = HeldoutEval.score
_real_generate_answers = inference.generate_answers
_real_generate_batch = runner.generate_batch
_scoring: dict = {}


def _score(self, args, state, control):
    _scoring.update(step=state.global_step, rank=self.trainer.accelerator.process_index, dir=args.output_dir)
    try:
        return _real_score(self, args, state, control)
    finally:
        _scoring.clear()


def _record(kind: str, samples) -> None:
    if _scoring:
        path = os.path.join(_scoring["dir"], f"heldout-probe-rank{_scoring['rank']}.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": _scoring["step"], "kind": kind, "ids": [s.id for s in samples]}) + "\n")


def _generate_answers(model, processor, samples, *args, **kwargs):
    out = _real_generate_answers(model, processor, samples, *args, **kwargs)
    _record("heldout", samples)
    return out


def _generate_batch(model, processor, samples, *args, **kwargs):
    out = _real_generate_batch(model, processor, samples, *args, **kwargs)
    _record("benchmark", samples)
    return out


HeldoutEval.score = _score
inference.generate_answers = _generate_answers
runner.generate_batch = _generate_batch

if __name__ == "__main__":
    import runpy

    # exactly `python -m audiothink.train ...` (hydra finds configs/ relative to the script it runs)
    runpy.run_module("audiothink.train", run_name="__main__", alter_sys=True)
