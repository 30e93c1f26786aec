"""model.liger_kernels: which modules get Liger's kernels, for both families (Liger itself needs a GPU).

Liger cannot run here (Triton, CUDA), so a stand-in `liger_kernel.transformers` with the same three names
records what the models built after `use_liger_kernels` are made of. What this proves is the wiring: the
language model's norms, MLPs and RoPE are swapped, the audio encoder is not, and nothing happens when the
switch is off. Liger's speed is measured by `bench/gpu_step.py --liger` on a GPU.
"""

from __future__ import annotations

import sys

import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2

from audiothink.models import use_liger_kernels
from audiothink.loading import load_model_and_processor
from tests.helpers import FakeRMSNorm, install_fake_liger


class FakeSwiGLUMLP(modeling_qwen2.Qwen2MLP):
    pass


ROPE_CALLS = []


def fake_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    ROPE_CALLS.append(q.shape)
    return modeling_qwen2.apply_rotary_pos_emb.__wrapped_original__(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


@pytest.fixture()
def fake_liger(monkeypatch):
    fake_rope.__wrapped_original__ = modeling_qwen2.apply_rotary_pos_emb
    install_fake_liger(monkeypatch, FakeRMSNorm, FakeSwiGLUMLP, fake_rope)
    ROPE_CALLS.clear()


def _toy_cfg(toy_model_dir, liger: bool):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "path": str(toy_model_dir), "cls": "transformers.Qwen2AudioForConditionalGeneration", "processor": None,
        "dtype": "float32", "attn_implementation": "sdpa", "liger_kernels": liger,
    })


def test_qwen2_audio_language_model_gets_the_kernels(fake_liger, toy_model_dir):
    model, processor = load_model_and_processor(_toy_cfg(toy_model_dir, liger=True))
    lm = model.model.language_model
    assert all(isinstance(layer.mlp, FakeSwiGLUMLP) for layer in lm.layers)
    assert all(isinstance(layer.input_layernorm, FakeRMSNorm) for layer in lm.layers)
    assert isinstance(lm.norm, FakeRMSNorm)
    assert not any(isinstance(m, (FakeRMSNorm, FakeSwiGLUMLP)) for m in model.model.audio_tower.modules())
    ids = processor.tokenizer("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(input_ids=ids)
    assert len(ROPE_CALLS) == len(lm.layers)  # the RoPE of every attention layer went through the kernel


def test_omni_thinker_language_model_gets_the_kernels(fake_liger):
    from audiothink.toy.omni import build_omni_processor, build_omni_thinker

    assert use_liger_kernels("transformers.Qwen2_5OmniThinkerForConditionalGeneration")[0].endswith(
        "Qwen2_5OmniRMSNorm")
    model = build_omni_thinker(build_omni_processor())
    lm = model.model.language_model
    assert all(isinstance(layer.mlp, FakeSwiGLUMLP) for layer in lm.layers)
    assert all(isinstance(layer.post_attention_layernorm, FakeRMSNorm) for layer in lm.layers)
    assert not any(isinstance(m, (FakeRMSNorm, FakeSwiGLUMLP)) for m in model.model.audio_tower.modules())


def test_switch_off_leaves_transformers_alone(fake_liger, toy_model_dir):
    model, _ = load_model_and_processor(_toy_cfg(toy_model_dir, liger=False))
    assert not any(isinstance(m, (FakeRMSNorm, FakeSwiGLUMLP)) for m in model.modules())


def test_missing_liger_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[liger\]'"):
        use_liger_kernels("transformers.Qwen2AudioForConditionalGeneration")


def test_unknown_model_class_is_refused():
    with pytest.raises(ValueError, match="no mapping for LlamaForCausalLM"):
        use_liger_kernels("transformers.LlamaForCausalLM")
