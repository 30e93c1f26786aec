"""The model configs' own settings on the tiny models: each 7B config's `lora` wraps the language model's
projections and nothing under the audio encoder or projector; `model.freeze_audio_encoder` keeps a full
fine-tuning step off the encoder (and, off, the encoder trains)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from audiothink.toy import TOY_MODEL_DIR
from audiothink.loading import build_peft_config, load_model_and_processor
from audiothink.toy.omni import build_omni_processor, build_omni_thinker
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Accuracy, AdaptiveThink, Format
from tests.helpers import load_toy, toy_grpo_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Everything that is not the language model: the audio encoder, Qwen2-Audio's projector, Omni's vision tower.
NOT_LM = ("model.audio_tower.", "model.multi_modal_projector", "model.visual.")


def _model_section(config: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]


def _tiny(config: str, toy_model_dir):
    if config == "qwen2_audio_7b":
        return load_toy(toy_model_dir)[0]
    return build_omni_thinker(build_omni_processor())


@pytest.mark.parametrize("config", ["qwen2_audio_7b", "qwen2_5_omni_7b"])
def test_7b_config_lora_wraps_the_language_model_only(config, toy_model_dir):
    """The config's own `lora` (target_modules regex) on the tiny model of the same architecture."""
    model = _tiny(config, toy_model_dir)
    layers = model.config.text_config.num_hidden_layers
    peft_model = get_peft_model(model, build_peft_config(OmegaConf.create(_model_section(config)["lora"])))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert not [n for n in wrapped if n.startswith(NOT_LM)], sorted(n for n in wrapped if n.startswith(NOT_LM))
    assert wrapped == {f"model.language_model.layers.{i}.{p}" for i in range(layers) for p in PROJECTIONS}
    # the encoder and projector are there to be hit (names as the regexes see them): nothing was skipped by luck
    names = {n for n, _ in model.named_modules()}
    assert any(n.startswith("model.audio_tower.layers.") and n.endswith("q_proj") for n in names)


def test_toy_lora_example_wraps_the_language_model_only(toy_model_dir):
    """configs/model/toy_lora.yaml, the README's LoRA-on-the-toy example: its regex wraps every projection of
    the toy's language model and nothing under the audio encoder or projector."""
    model = load_toy(toy_model_dir)[0]
    lora = yaml.safe_load((CONFIGS / "toy_lora.yaml").read_text())["lora"]
    peft_model = get_peft_model(model, build_peft_config(OmegaConf.create(lora)))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    layers = model.config.text_config.num_hidden_layers
    assert wrapped == {f"model.language_model.layers.{i}.{p}" for i in range(layers) for p in PROJECTIONS}
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in peft_model.parameters())


def _toy_model_cfg(**overrides):
    cfg = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    cfg.update(path=str(TOY_MODEL_DIR), **overrides)
    return OmegaConf.create(cfg)


def test_freeze_audio_encoder_is_documented_and_off_by_default():
    for config in ("toy", "qwen2_audio_7b", "qwen2_5_omni_7b", "qwen3_omni_30b_a3b", "qwen3_omni_tiny"):
        section = (_model_section(config) if config not in ("toy", "qwen3_omni_tiny")
                   else yaml.safe_load((CONFIGS / f"{config}.yaml").read_text()))
        assert section["freeze_audio_encoder"] is False, config


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "trained"])
def test_freeze_audio_encoder_in_a_full_fine_tuning_step(freeze, toy_files, tmp_path, caplog):
    from tests.test_trainer import _dataset

    with caplog.at_level(logging.INFO, logger="audiothink"):
        model, processor = load_model_and_processor(_toy_model_cfg(freeze_audio_encoder=freeze))
    encoder = {n for n, _ in model.named_parameters() if n.startswith("model.audio_tower.")}
    encoder_size = sum(p.numel() for n, p in model.named_parameters() if n in encoder)
    said = [r.getMessage() for r in caplog.records if "freeze_audio_encoder" in r.getMessage()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format(), Accuracy()],
        args=toy_grpo_args(tmp_path, learning_rate=1e-2), train_dataset=_dataset(toy_files), max_audio_seconds=2.0,
    )
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lm = {n for n in before if n.startswith("model.language_model.")}
    assert len(changed & lm) > len(lm) // 2  # the language model trained either way
    if freeze:
        assert not changed & encoder, sorted(changed & encoder)
        assert all(not after[n].requires_grad for n in encoder)
        assert said and f"{encoder_size} audio-encoder parameters frozen" in said[0]  # the log says how many
    else:
        assert not said
        trainable = {n for n in encoder if after[n].requires_grad}  # Whisper's fixed positions never train
        assert trainable and trainable <= changed, sorted(trainable - changed)


def test_freeze_audio_encoder_on_the_omni_thinker():
    from audiothink.models import freeze_audio_encoder

    model = build_omni_thinker(build_omni_processor())
    tower = {n: p for n, p in model.named_parameters() if n.startswith("model.audio_tower.")}
    frozen, trainable = freeze_audio_encoder(model)
    assert frozen == sum(p.numel() for p in tower.values()) > 0 and "model.audio_tower.proj.weight" in tower
    assert not any(p.requires_grad for p in tower.values())
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n not in tower) > 0
    with pytest.raises(ValueError, match="no Qwen2-Audio or Qwen2.5-Omni audio encoder"):
        freeze_audio_encoder(torch.nn.Linear(2, 2))
