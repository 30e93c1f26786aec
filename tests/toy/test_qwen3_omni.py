"""The tiny Qwen3-Omni thinker's checkpoint (model=qwen3_omni_tiny's ${tiny_qwen3_omni_dir:}): built into the cache
on first use, the same bytes on every build, reused after that, and in the published thinker's shape."""

from __future__ import annotations

from safetensors.torch import load_file
from transformers import AutoConfig

from audiothink.toy.qwen3_omni import BUILD_VERSION, tiny_qwen3_omni_dir


def test_built_once_into_the_cache_then_reused(tmp_path):
    first = tiny_qwen3_omni_dir(tmp_path / "a")
    assert first == tmp_path / "a" / f"qwen3-omni-tiny-v{BUILD_VERSION}"
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_qwen3_omni_dir(tmp_path / "a") == first and weights.stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp" in p.name]  # no half-written folder left
    # seeded: another machine (another cache) builds the same weights
    again = load_file(tiny_qwen3_omni_dir(tmp_path / "b") / "model.safetensors")
    built = load_file(weights)
    assert built.keys() == again.keys() and all((built[k] == again[k]).all() for k in built)
    assert weights.stat().st_size < 3_000_000


def test_the_checkpoint_has_the_published_structure(tmp_path):
    config = AutoConfig.from_pretrained(tiny_qwen3_omni_dir(tmp_path))
    assert config.model_type == "qwen3_omni_moe_thinker"
    text = config.text_config
    # a mixture of experts in every layer, top-k routing with normalised weights, as Qwen3-Omni-30B-A3B's
    assert text.num_experts == 4 and text.num_experts_per_tok == 2 and text.norm_topk_prob
    assert text.decoder_sparse_step == 1 and text.mlp_only_layers == []
    assert text.router_aux_loss_coef == 0.001 and text.output_router_logits is False  # as its config.json
    assert config.audio_config.model_type == "qwen3_omni_moe_audio_encoder"
    assert (config.audio_config.n_window, config.audio_config.n_window_infer) == (50, 800)
    assert config.position_id_per_seconds == 13
    # the router is drawn wider than transformers' init (std 0.02), for decisive routing
    gates = [v for k, v in load_file(tiny_qwen3_omni_dir(tmp_path) / "model.safetensors").items()
             if k.endswith("mlp.gate.weight")]
    assert len(gates) == text.num_hidden_layers and all(0.3 < float(g.std()) < 0.7 for g in gates)
