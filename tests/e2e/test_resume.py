"""Resume is exact: a run killed with SIGKILL and resumed continues as if it had never stopped.

For full fine-tuning and LoRA, on the toy Qwen2-Audio, the tiny Qwen2.5-Omni thinker and the tiny Qwen3-Omni thinker
(mixture of experts; the toy's full fine-tuning resumed with `resume=true` alone, the others with their overrides
repeated): run B trains 4 steps (checkpoint every 2) and is killed in step 4 (steps 1-3 done and logged, the
newest checkpoint is step 2), then resumed with `resume=true`, and its metrics.jsonl / completions.jsonl must
hold each step once.
- The toy's full fine-tuning (the README's command, `test_resume_with_no_overrides_continues_the_run_in_the_folder`)
  is compared with run A, the same run uninterrupted: from the checkpoint on, B's rollouts (row ids, prompt ids,
  sampled completion ids, the weights they were sampled from), logged metrics, completion samples and final
  weights must equal A's.
- The other models and adapters are compared with what B itself did before the kill, B killed a moment later
  (once step 4's rollout is recorded): steps 3 and 4 ran in the killed process from the state an uninterrupted
  run has (a run is deterministic here), so the resumed rollouts of steps 3 and 4 (the second sampled from the
  weights that step 3's update made with the restored optimizer) and step 3's metrics and completion samples must
  repeat them exactly (one training process fewer per case than a run A).

(transformers 5 saves full checkpoints under hub names while the model in memory has other names; its
resume loads them with strict=False, i.e. nothing, and warns: the resumed weights were the starting ones.)
Both runs use one CPU thread (tests/e2e/resume_probe.py): with two, runs differ in the last bits after a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import toy_cache

REPO = Path(__file__).resolve().parents[2]
TOY_LORA = "model.lora={r:4,alpha:8,dropout:0.0,target_modules:'^model\\.language_model\\..*\\.(q_proj|v_proj)$'}"
# timings and the run-average loss differ by nature; everything else must match
_NOT_COMPARED = ("runtime", "per_second", "step_time", "train_loss", "total_flos")


def _run(args: list[str], run_dir: Path, cache: Path, kill_at: int | None = None,
         kill_after_rollout: int | None = None) -> subprocess.CompletedProcess:
    """tests/e2e/resume_probe.py in `run_dir`; `kill_at` / `kill_after_rollout`: its SIGKILL points."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    for name, value in (("RESUME_PROBE_KILL_AT", kill_at), ("RESUME_PROBE_KILL_AFTER_ROLLOUT", kill_after_rollout)):
        env.pop(name, None)
        if value is not None:
            env[name] = str(value)
    cmd = [sys.executable, "-m", "tests.e2e.resume_probe", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_metrics(run_dir: Path | list[dict]) -> dict[int, dict]:
    """Per-step metric records of a run folder's metrics.jsonl (or of its records, read earlier), the compared
    values only (the end-of-training summary record is not a step)."""
    records = _jsonl(run_dir / "metrics.jsonl") if isinstance(run_dir, Path) else run_dir
    records = [r for r in records if "train_runtime" not in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if not any(n in k for n in _NOT_COMPARED)} for r in records}


MODELS = {
    "toy": [],
    "omni": ["model=qwen2_5_omni_7b", "model.dtype=float32", "trainer=toy", "model.max_audio_seconds=2.0"],
    # the tiny Qwen3-Omni thinker (mixture of experts), built into the run's cache on first use
    # (random weights: every completion runs to max_completion_length, so the toy trainer's masking of cut
    # completions would leave no token in the loss; off here, as a random model's smoke test needs)
    "qwen3_omni": ["model=qwen3_omni_tiny", "trainer.mask_truncated_completions=false"],
}
QWEN3_OMNI_LORA = ("model.lora={r:4,alpha:8,dropout:0.0,"
                   "target_modules:'^model\\.language_model\\.layers\\.\\d+\\.self_attn\\.(q_proj|v_proj)$'}")
ADAPTERS = {
    "full": {"toy": ["model.lora=null"], "omni": ["model.lora=null"], "qwen3_omni": []},
    "lora": {"toy": [TOY_LORA], "omni": ["model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0"],
             "qwen3_omni": [QWEN3_OMNI_LORA]},
}


def _killed(args, run_dir: Path, cache: Path, **kill) -> dict[str, list[dict]]:
    """Run `args` in `run_dir`, killed (SIGKILL) in step 4 (`kill`: where, `_run`'s; default when it starts);
    what it recorded by then (probe rollouts, metrics, completion samples), read before a resume rewrites the
    logs."""
    killed = _run(args, run_dir, cache, **(kill or {"kill_at": 3}))
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}\n{killed.stderr[-3000:]}"
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file() and not (run_dir / "final").exists()
    return {name: _jsonl(run_dir / f"{name}.jsonl") for name in ("probe-rollouts", "metrics", "completions")}


@pytest.mark.slow
# the toy with full fine-tuning: test_resume_with_no_overrides_continues_the_run_in_the_folder below (the same
# checks against an uninterrupted run, resumed with the README's command alone)
@pytest.mark.parametrize("model, adapter", [("toy", "lora"), ("omni", "full"), ("omni", "lora"),
                                            ("qwen3_omni", "full"), ("qwen3_omni", "lora")])
def test_killed_run_resumes_exactly(model, adapter, tmp_path, omni_dir):
    args = [*MODELS[model], *ADAPTERS[adapter][model]]
    if model == "omni":
        args.append(f"model.path={omni_dir}")
    args += ["trainer.max_steps=4", "trainer.save_steps=2", "trainer.per_device_train_batch_size=16",
             "trainer.max_completion_length=24", "trainer.logging_steps=1", "trainer.report_to=[]",
             "trainer.learning_rate=1e-3", "eval.num_samples=0", "log.plots=false"]
    cache, b = toy_cache(tmp_path), tmp_path / "b"
    # killed in step 4 once its rollout is recorded: the rollouts of steps 1-4 (the last one sampled from the
    # weights step 3's update made, with the optimizer state the run had), the metrics of steps 1-3
    before = _killed(args, b, cache, kill_after_rollout=3)
    assert [r["step"] for r in before["probe-rollouts"]] == [0, 1, 2, 3]
    assert sorted(r["step"] for r in before["metrics"]) == [1, 2, 3]
    resumed = _run([*args, "resume=true"], b, cache)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "missing" not in resumed.stderr.lower() and "unexpected" not in resumed.stderr.lower(), resumed.stderr

    rollouts = _jsonl(b / "probe-rollouts.jsonl")
    # steps 1-4 before the kill, then 3 and 4 again after the resume from checkpoint-2
    assert [r["step"] for r in rollouts] == [0, 1, 2, 3, 2, 3]
    # steps 3 and 4 as the killed run made them: the same prompts, the same weights (step 3's: the checkpoint
    # loaded; step 4's: the optimizer and scheduler state restored too), the same sampled completions
    for got, want in zip(rollouts[4:], before["probe-rollouts"][2:], strict=True):
        assert got["ids"] == want["ids"], f"step {got['step']}: other prompts"
        assert got["weights"] == want["weights"], f"step {got['step']}: other weights (checkpoint not loaded?)"
        assert got["prompt_ids"] == want["prompt_ids"], f"step {got['step']}: other prompt ids"
        assert got["completion_ids"] == want["completion_ids"], f"step {got['step']}: other completions"

    metrics = _step_metrics(b)
    assert sorted(metrics) == [1, 2, 3, 4]
    killed_metrics = _step_metrics(before["metrics"])
    for step in (1, 2, 3):  # 1-2 kept from before the checkpoint, 3 trained again
        assert metrics[step] == pytest.approx(killed_metrics[step], rel=1e-6, abs=1e-9), f"step {step}"
    completions = _jsonl(b / "completions.jsonl")
    assert [r for r in completions if r["step"] <= 3] == before["completions"]
    assert {r["step"] for r in completions} == {1, 2, 3, 4}
    summary = json.loads((b / "summary.json").read_text())
    assert summary["steps"] == 4


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every path of a folder with its size and modification time: any write shows."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.slow
def test_resume_with_no_overrides_continues_the_run_in_the_folder(tmp_path):
    """The README's resume command alone (`hydra.run.dir=… resume=true`) continues the run as it was started (its
    config.yaml), not the defaults (150 steps, 300 held-out items, another annealing schedule); an override that
    would change the run (a learning rate, force_mode) is refused before anything is written; trainer.max_steps
    extends a finished run."""
    args = ["model.lora=null", "trainer.max_steps=4", "trainer.save_steps=2", "trainer.per_device_train_batch_size=16",
            "trainer.max_completion_length=24", "trainer.logging_steps=1", "trainer.report_to=[]",
            "trainer.learning_rate=1e-3", "eval.num_samples=0", "log.plots=false"]
    cache = toy_cache(tmp_path)  # the default toy set, built once per test process
    a, b = tmp_path / "a", tmp_path / "b"
    done = _run(args, a, cache)  # run A: the same run, uninterrupted
    assert done.returncode == 0, done.stderr[-4000:]
    before = _killed(args, b, cache)
    assert 3 in {r["step"] for r in before["metrics"]}  # step 3 was logged before the kill
    # kill_at=5: a resume that trained past the run's 4 steps (the defaults' 150) stops itself at step 5
    resumed = _run(["resume=true"], b, cache, kill_at=5)
    assert resumed.returncode == 0, f"rc {resumed.returncode}: {resumed.stderr[-4000:]}"
    assert "training: 4 steps" in resumed.stdout + resumed.stderr, resumed.stdout[-2000:]
    assert "missing" not in resumed.stderr.lower() and "unexpected" not in resumed.stderr.lower(), resumed.stderr

    rollouts_a, rollouts_b = _jsonl(a / "probe-rollouts.jsonl"), _jsonl(b / "probe-rollouts.jsonl")
    assert [r["step"] for r in rollouts_b] == [0, 1, 2, 2, 3]
    assert rollouts_b[3:] == rollouts_a[2:]
    metrics_a, metrics_b = _step_metrics(a), _step_metrics(b)
    assert sorted(metrics_b) == sorted(metrics_a) == [1, 2, 3, 4]
    for step in (3, 4):
        assert metrics_b[step] == pytest.approx(metrics_a[step], rel=1e-6, abs=1e-9), f"step {step}"
    assert _jsonl(b / "completions.jsonl") == _jsonl(a / "completions.jsonl")
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa), "final weights differ"
    assert json.loads((b / "summary.json").read_text())["steps"] == 4
    assert not (b / "heldout_before.json").exists()  # eval.num_samples=0 stayed off
    assert "max_steps: 4" in (b / "config.resumed-2.yaml").read_text()

    # an override that changes the run: refused in one line naming the keys, exit 2, the folder untouched
    before = _listing(b)
    for override, key in (("trainer.learning_rate=5e-4", "trainer.learning_rate"), ("force_mode=think", "force_mode")):
        refused = _run(["resume=true", override], b, cache)
        assert refused.returncode == 2, refused.stderr[-3000:]
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: resume:") and key in lines[0], refused.stderr
        assert _listing(b) == before

    # trainer.max_steps at resume extends the finished run, from its own config
    extended = _run(["resume=true", "trainer.max_steps=6"], b, cache, kill_at=7)
    assert extended.returncode == 0, extended.stderr[-4000:]
    assert sorted(_step_metrics(b)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((b / "summary.json").read_text())["steps"] == 6
    resumed_cfg = (b / "config.resumed-4.yaml").read_text()
    assert "max_steps: 6" in resumed_cfg and "learning_rate: 0.001" in resumed_cfg
