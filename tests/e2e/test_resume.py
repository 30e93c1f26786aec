"""Resume is exact: a run killed with SIGKILL and resumed continues as if it had never stopped.

For full fine-tuning and LoRA, on the toy Qwen2-Audio, the tiny Qwen2.5-Omni thinker and the tiny Qwen3-Omni thinker
(mixture of experts; the toy's full fine-tuning resumed with `resume=true` alone, the others with their overrides
repeated): run A trains 4
steps uninterrupted (checkpoint every 2); run B is killed when step 4 starts (steps 1-3 done and logged, the
newest checkpoint is step 2), then resumed with `resume=true`. From the checkpoint on, B's rollouts (row ids,
prompt ids, sampled completion ids, the weights they were sampled from), its logged metrics and its
completion samples must equal A's, and its metrics.jsonl / completions.jsonl must hold each step once.

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


def _run(args: list[str], run_dir: Path, cache: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("RESUME_PROBE_KILL_AT", None)
    if kill_at is not None:
        env["RESUME_PROBE_KILL_AT"] = str(kill_at)
    cmd = [sys.executable, "-m", "tests.e2e.resume_probe", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_metrics(run_dir: Path) -> dict[int, dict]:
    """Per-step metric records (the end-of-training summary record is not a step)."""
    records = [r for r in _jsonl(run_dir / "metrics.jsonl") if "train_runtime" not in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if not any(n in k for n in _NOT_COMPARED)} for r in records}


MODELS = {
    "toy": [],
    "omni": ["model=qwen2_5_omni_7b", "model.dtype=float32", "trainer=toy", "model.max_audio_seconds=2.0"],
    # the tiny Qwen3-Omni thinker (mixture of experts), built into the run's cache on first use
    "qwen3_omni": ["model=qwen3_omni_tiny"],
}
QWEN3_OMNI_LORA = ("model.lora={r:4,alpha:8,dropout:0.0,"
                   "target_modules:'^model\\.language_model\\.layers\\.\\d+\\.self_attn\\.(q_proj|v_proj)$'}")
ADAPTERS = {
    "full": {"toy": ["model.lora=null"], "omni": ["model.lora=null"], "qwen3_omni": []},
    "lora": {"toy": [TOY_LORA], "omni": ["model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0"],
             "qwen3_omni": [QWEN3_OMNI_LORA]},
}


def _uninterrupted_and_killed(args, tmp_path):
    """The same run twice: a/ to the end, b/ killed (SIGKILL) at step 3; (a, b, the cache they share)."""
    cache = toy_cache(tmp_path)  # the default toy set, built once per test process
    a, b = tmp_path / "a", tmp_path / "b"
    done = _run(args, a, cache)
    assert done.returncode == 0, done.stderr[-4000:]
    killed = _run(args, b, cache, kill_at=3)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}\n{killed.stderr[-3000:]}"
    return a, b, cache


@pytest.mark.slow
# the toy with full fine-tuning: test_resume_with_no_overrides_continues_the_run_in_the_folder below (the same
# checks, resumed with the README's command alone; three training processes fewer in the suite)
@pytest.mark.parametrize("model, adapter", [("toy", "lora"), ("omni", "full"), ("omni", "lora"),
                                            ("qwen3_omni", "full"), ("qwen3_omni", "lora")])
def test_killed_run_resumes_exactly(model, adapter, tmp_path, omni_dir):
    args = [*MODELS[model], *ADAPTERS[adapter][model]]
    if model == "omni":
        args.append(f"model.path={omni_dir}")
    args += ["trainer.max_steps=4", "trainer.save_steps=2", "trainer.per_device_train_batch_size=16",
             "trainer.max_completion_length=24", "trainer.logging_steps=1", "trainer.report_to=[]",
             "trainer.learning_rate=1e-3", "eval.num_samples=0"]
    a, b, cache = _uninterrupted_and_killed(args, tmp_path)
    assert (b / "checkpoint-2" / "trainer_state.json").is_file() and not (b / "final").exists()
    assert 3 in {r["step"] for r in _jsonl(b / "metrics.jsonl")}  # step 3 was logged before the kill
    resumed = _run([*args, "resume=true"], b, cache)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "missing" not in resumed.stderr.lower() and "unexpected" not in resumed.stderr.lower(), resumed.stderr

    rollouts_a, rollouts_b = _jsonl(a / "probe-rollouts.jsonl"), _jsonl(b / "probe-rollouts.jsonl")
    assert [r["step"] for r in rollouts_a] == [0, 1, 2, 3]
    # B: steps 0-2 before the kill (step 3's rollout never happened), then 2 and 3 again after the resume
    assert [r["step"] for r in rollouts_b] == [0, 1, 2, 2, 3]
    for got, want in zip(rollouts_b[3:], rollouts_a[2:]):
        assert got["ids"] == want["ids"], f"step {got['step']}: other prompts"
        assert got["weights"] == want["weights"], f"step {got['step']}: other weights (checkpoint not loaded?)"
        assert got["prompt_ids"] == want["prompt_ids"], f"step {got['step']}: other prompt ids"
        assert got["completion_ids"] == want["completion_ids"], f"step {got['step']}: other completions"

    metrics_a, metrics_b = _step_metrics(a), _step_metrics(b)
    assert sorted(metrics_b) == sorted(metrics_a) == [1, 2, 3, 4]
    for step in (3, 4):
        assert metrics_b[step] == pytest.approx(metrics_a[step], rel=1e-6, abs=1e-9), f"step {step}"
    assert _jsonl(b / "completions.jsonl") == _jsonl(a / "completions.jsonl")
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
    a, b, cache = _uninterrupted_and_killed(args, tmp_path)
    assert (b / "checkpoint-2" / "trainer_state.json").is_file() and not (b / "final").exists()
    assert 3 in {r["step"] for r in _jsonl(b / "metrics.jsonl")}  # step 3 was logged before the kill
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
