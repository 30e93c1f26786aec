"""bench/gpu_step.py's code paths (model building, the trainer step, the figures) at toy size on CPU.

The benchmark itself needs a GPU and full-size models; this runs the same script with the published
dimensions shrunk, so a broken build or report line shows up here and not on a borrowed GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small_text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 1024}
    audio = module.QWEN2_AUDIO_7B
    monkeypatch.setattr(module, "QWEN2_AUDIO_7B", {
        "audio_config": audio["audio_config"] | {"encoder_layers": 1, "encoder_attention_heads": 2,
                                                 "encoder_ffn_dim": 32, "d_model": 16},
        "text_config": audio["text_config"] | small_text,
    })
    omni = module.QWEN2_5_OMNI_7B_THINKER
    monkeypatch.setattr(module, "QWEN2_5_OMNI_7B_THINKER", {
        "audio_config": omni["audio_config"] | {"encoder_layers": 1, "encoder_attention_heads": 2,
                                                "encoder_ffn_dim": 32, "d_model": 16, "output_dim": 32},
        "vision_config": omni["vision_config"] | {"depth": 1, "hidden_size": 16, "intermediate_size": 16,
                                                  "num_heads": 2, "out_hidden_size": 32, "fullatt_block_indexes": [0]},
        "text_config": omni["text_config"] | small_text | {
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]}},
    })
    return module


@pytest.mark.parametrize("model", ["qwen2_audio_7b", "qwen2_5_omni_7b"])
def test_gpu_step_runs_and_reports_at_toy_size(bench, model, capsys):
    args = argparse.Namespace(
        model=model, prompts=2, G=2, audio_seconds=1.0, new_tokens=4, lora_r=4, beta=0.04, steps=1, micro=2,
        checkpointing=False, liger=False, no_share_encoder=False, skip_fast=True, fast_calls=2, json=None,
    )
    out = bench.run_one(args, bw=1e11, mm=1e12)
    assert out["rows"] == 4 and out["generated_tokens"] == 16
    assert out["prompt_tokens"] > 25  # 1 s of audio is 25 audio tokens, plus the text
    for key in ("rollout_tok_s_plain", "floor_tok_s", "update_s", "mfu", "step_s"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    # two copies of each prompt: half the clip passes
    assert out["encoder_clips_encoded"] * 2 <= out["encoder_clips_requested"]
    printed = capsys.readouterr().out
    assert bench.MODELS[model] in printed and "MFU" in printed and "memory-bound floor" in printed
