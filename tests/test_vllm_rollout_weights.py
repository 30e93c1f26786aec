"""Weight sync names: every transformers-5 in-memory parameter lands on a name vLLM's loader accepts.

(The sync itself, into a real vLLM engine, full fine-tuning and LoRA merged: tests/test_vllm_rollout_engine.py.)

The vLLM side is recorded here as data, from vLLM's source (github.com/vllm-project/vllm):
- vllm/model_executor/models/qwen2_audio.py @ cd1e84523cfda18c8631f46a24b9ee753d8614d3:
  Qwen2AudioForConditionalGeneration has the modules `audio_tower`, `multi_modal_projector` and
  `language_model` (a Qwen2ForCausalLM: `model`, `lm_head`); load_weights is AutoWeightsLoader(self)
  without a mapper, so names arrive as in the checkpoint.
- vllm/model_executor/models/qwen2_5_omni_thinker.py @ 7f4a06ae06cd9bea45d30d39de049b1ab39abc77:
  Qwen2_5OmniThinkerForConditionalGeneration has `audio_tower`, `visual`, `language_model` (Qwen2ForCausalLM);
  hf_to_vllm_mapper orig_to_new_prefix {"thinker.lm_head.": "language_model.lm_head.",
  "thinker.model.": "language_model.model.", "thinker.": ""}; skip_prefixes ["talker.", "token2wav."].
- vllm/model_executor/models/utils.py @ d30d0c133c3f47a6436788f82398b21eb23df8c0: WeightsMapper applies
  each matching prefix in order (replacing it once); AutoWeightsLoader routes a name by its first dotted
  component to a child module (recursing) or parameter and raises "There is no module or parameter named"
  otherwise, unless a skip prefix matches.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

from audiothink.vllm_rollout import CHECKPOINT_PREFIXES, AudioVLLMGeneration, checkpoint_name, checkpoint_name_mapper
from tests.helpers import load_toy

# vLLM's loaders, as data (see the module docstring for where each line is from). A child of None takes
# any name below it (the tower's own names, which are the checkpoint's).
QWEN2_FOR_CAUSAL_LM = {"model": None, "lm_head": None}
VLLM_LOADERS = {
    "qwen2_audio": {
        "mapper": {},
        "skip": [],
        "modules": {"audio_tower": None, "multi_modal_projector": None, "language_model": QWEN2_FOR_CAUSAL_LM},
    },
    "qwen2_5_omni_thinker": {
        "mapper": {"thinker.lm_head.": "language_model.lm_head.", "thinker.model.": "language_model.model.",
                   "thinker.": ""},
        "skip": ["talker.", "token2wav."],
        "modules": {"audio_tower": None, "visual": None, "language_model": QWEN2_FOR_CAUSAL_LM},
    },
}


def vllm_loads(name: str, model_type: str) -> str:
    """The module path vLLM's loader puts `name` into, or a ValueError as AutoWeightsLoader raises it."""
    loader = VLLM_LOADERS[model_type]
    for prefix, new in loader["mapper"].items():  # WeightsMapper._map_name, prefixes
        if name.startswith(prefix):
            name = name.replace(prefix, new, 1)
    if any(name.startswith(p) for p in loader["skip"]):
        return "<skipped>"
    modules, parts, path = loader["modules"], name.split("."), []
    while modules is not None:
        head = parts[len(path)]
        if head not in modules:
            raise ValueError(f"There is no module or parameter named {'.'.join(path + [head])!r}")
        path.append(head)
        modules = modules[head]
    if len(parts) <= len(path):
        raise ValueError(f"{name!r} names a module, not a parameter")
    return name


def tiny_omni_thinker(seed=0):
    torch.manual_seed(seed)
    config = Qwen2_5OmniThinkerConfig(
        audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                      "num_mel_bins": 8, "max_source_positions": 50, "n_window": 10, "output_dim": 32},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": 32, "fullatt_block_indexes": [0]},
        text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "tie_word_embeddings": False},
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config)


@pytest.fixture(scope="module")
def toy_model(toy_model_dir):
    return load_toy(toy_model_dir)[0]


def _saved_keys(model, tmp_path) -> set[str]:
    """The names transformers itself writes the model under (it reverses its load-time renaming)."""
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def _check_all(names: list[str], model_type: str) -> list[str]:
    mapped = [checkpoint_name(n, model_type) for n in names]  # covers every parameter (raises otherwise)
    assert len(set(mapped)) == len(names), "two parameters map to one name"
    for n in mapped:
        assert vllm_loads(n, model_type) != "<skipped>", n
    return mapped


def test_qwen2_audio_names(toy_model, toy_model_dir):
    names = [n for n, _ in toy_model.named_parameters()]
    assert any(n.startswith("model.language_model.") for n in names)  # transformers 5 in-memory layout
    mapped = _check_all(names, "qwen2_audio")
    # the checkpoint the toy was saved as (by transformers 5.23 save_pretrained): the same names, all of them
    with safe_open(str(toy_model_dir / "model.safetensors"), "pt") as f:
        assert set(mapped) == set(f.keys())
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in mapped
    assert "language_model.lm_head.weight" in mapped
    # the trap: in-memory names are refused by vLLM's loader
    with pytest.raises(ValueError, match="no module or parameter named 'model'"):
        vllm_loads("model.language_model.layers.0.self_attn.q_proj.weight", "qwen2_audio")


def test_omni_thinker_names(tmp_path):
    model = tiny_omni_thinker()
    assert model.config.model_type == "qwen2_5_omni_thinker"
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in names if n.startswith("model.")} == {
        "model.audio_tower", "model.visual", "model.language_model"}
    mapped = _check_all(names, "qwen2_5_omni_thinker")
    # transformers writes a standalone thinker without the `thinker.` prefix; the Omni checkpoint vLLM
    # loads has it
    assert set(mapped) == {"thinker." + k for k in _saved_keys(model, tmp_path)}
    loaded = {vllm_loads(n, "qwen2_5_omni_thinker") for n in mapped}
    assert {n.split(".")[0] for n in loaded} == {"audio_tower", "visual", "language_model"}
    assert "language_model.model.layers.0.mlp.up_proj.weight" in loaded
    with pytest.raises(ValueError, match="no module or parameter named 'model'"):
        vllm_loads("model.language_model.layers.0.mlp.up_proj.weight", "qwen2_5_omni_thinker")


def test_unknown_names_and_models_fail_loudly():
    with pytest.raises(KeyError, match="under none of"):
        checkpoint_name("encoder.layers.0.weight", "qwen2_audio")
    with pytest.raises(NotImplementedError, match="no vLLM weight-name mapping"):
        checkpoint_name("model.x", "llama")
    assert set(CHECKPOINT_PREFIXES) == set(VLLM_LOADERS)


def test_trl_name_fixes_then_checkpoint_names(toy_model):
    # the engine's naming alone (no vLLM): TRL's prefix fixes, then the checkpoint name
    engine = AudioVLLMGeneration.__new__(AudioVLLMGeneration)
    engine._to_checkpoint = checkpoint_name_mapper(toy_model)
    fix = engine._fix_param_name_to_vllm
    # activation checkpointing wrappers (TRL strips them), FSDP and modules_to_save prefixes
    assert fix("model.language_model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "language_model.model.layers.0.mlp.up_proj.weight"
    assert fix("model.audio_tower._fsdp_wrapped_module.conv1.weight", ["_fsdp_wrapped_module."]) == \
        "audio_tower.conv1.weight"
    assert fix("lm_head.modules_to_save.default.weight", ["modules_to_save.default."]) == \
        "language_model.lm_head.weight"
