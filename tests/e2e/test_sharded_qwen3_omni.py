"""FSDP2 on 2 CPU processes (gloo) with the tiny Qwen3-Omni thinker: experts and router sharded with their decoder
layer, as tests/e2e/test_sharded.py does it for the toy (its checks, reused).

`accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2
--fsdp_transformer_layer_cls_to_wrap Qwen3OmniMoeAudioEncoderLayer,Qwen3OmniMoeThinkerTextDecoderLayer` of the real
entry point (through tests/e2e/dist_probe.py): an uninterrupted 3-step run, then a second run resumed from its step-2
sharded checkpoint, whose step 3 must equal the uninterrupted one (metrics, rollouts and final weights, exactly);
final/ is one whole checkpoint that loads with from_pretrained, holds every weight trained, and generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.test_sharded import COMMON, STEPS, Run, _check_engine, _check_generates, _check_reference_pass, _check_resume

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# one FSDP unit per encoder layer and per decoder layer (attention, router and experts together)
LAYERS = "Qwen3OmniMoeAudioEncoderLayer,Qwen3OmniMoeThinkerTextDecoderLayer"


def _launch(run_dir: Path, model_dir: Path, toy_files, *overrides: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_", "DS_"))}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", AUDIOTHINK_CACHE=str(run_dir.parent / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
        "--fsdp_transformer_layer_cls_to_wrap", LAYERS,
        "-m", "tests.e2e.dist_probe", "model=qwen3_omni_tiny", f"model.path={model_dir}", "data.generate_toy=false",
        f"data.train={toy_files['train']}", f"data.eval={toy_files['eval']}", *COMMON,
        # random weights: every completion is cut at max_completion_length; masked, no token would be in the loss
        "trainer.mask_truncated_completions=false", *overrides, f"hydra.run.dir={run_dir}",
    ]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-8000:]}"
    records = {r: [json.loads(line) for line in (run_dir / f"probe-rank{r}.jsonl").read_text().splitlines()]
               for r in (0, 1)}
    engine = {r: json.loads(p.read_text()) for r in (0, 1) if (p := run_dir / f"probe-engine-rank{r}.json").is_file()}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(run_dir, out.stdout, records, engine, {m["step"]: m for m in metrics if "loss" in m})


@pytest.fixture(scope="module")
def fsdp_qwen3(tmp_path_factory, qwen3_omni_dir, toy_files):
    tmp = tmp_path_factory.mktemp("fsdp-qwen3")
    full = _launch(tmp / "uninterrupted", qwen3_omni_dir, toy_files, f"trainer.max_steps={STEPS}")
    resumed = _launch(tmp / "resumed", qwen3_omni_dir, toy_files, f"trainer.max_steps={STEPS}",
                      f"resume={full.dir / f'checkpoint-{STEPS - 1}'}")
    return full, resumed


def test_fsdp2_trains_the_moe_thinker_sharded(fsdp_qwen3):
    full, _ = fsdp_qwen3
    _check_engine(full, "FSDP2", sharded_parameters=True)
    _check_reference_pass(full, STEPS)
    # (the batch-wide reward's one λ across ranks is model-independent: tests/e2e/test_sharded.py checks it on the
    # warm-started toy; this random thinker never thinks, so rank-local and global λ could not be told apart)
    # the experts' fused weights and the router are sharded too: half of each in each rank's file
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(full.dir / f"checkpoint-{STEPS - 1}" / "pytorch_model_fsdp_0")).read_metadata()
    for suffix in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"):
        name = next(k for k in meta.state_dict_metadata if k.endswith(suffix))
        assert len(meta.state_dict_metadata[name].chunks) == 2, name


def test_fsdp2_resume_from_the_sharded_checkpoint_equals_the_uninterrupted_run(fsdp_qwen3):
    _check_resume(*fsdp_qwen3)


def test_fsdp2_writes_whole_weights(fsdp_qwen3, qwen3_omni_dir, toy_files):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from audiothink.models import Qwen3OmniAudioProcessor

    final = fsdp_qwen3[0].dir / "final"
    model, info = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    weights, start = load_file(final / "model.safetensors"), load_file(qwen3_omni_dir / "model.safetensors")
    assert sorted(weights) == sorted(start)
    assert all(weights[k].shape == start[k].shape for k in start)  # whole tensors, not one rank's shard
    # on disk the experts are per expert (hub layout), as save_pretrained writes them
    assert any(".mlp.experts.3.down_proj.weight" in k for k in weights)
    for suffix in ("mlp.experts.0.gate_proj.weight", "mlp.gate.weight", "self_attn.q_proj.weight"):
        name = next(k for k in start if k.endswith(suffix))
        assert not torch.equal(weights[name], start[name]), f"{name} did not train"
    _check_generates(model, Qwen3OmniAudioProcessor.from_pretrained(final), toy_files)
