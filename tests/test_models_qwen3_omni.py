"""The Qwen3-Omni thinker path on a tiny Qwen3-Omni thinker (mixture of experts) built offline: processor and its
audio-token rule, prompt, loading, LoRA targets, the router's auxiliary loss, GRPO steps with the audio in every
pass, forced mode."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (Qwen3OmniMoeThinkerModel,
                                                                         _get_feat_extract_output_lengths)
from trl import GRPOTrainer

from audiothink.audio import clip_audio_tokens, min_clip_samples
from audiothink.data import load_samples
from audiothink.formats import force_prefill, parse
from audiothink.inference import generate_batch
from audiothink.loading import build_peft_config, load_model_and_processor
from audiothink.models import Qwen3OmniAudioProcessor
from audiothink.prompts import AudioPrompt
from audiothink.rewards import Accuracy, AdaptiveThink, Format
from audiothink.toy.qwen3_omni import build_qwen3_omni_processor, build_qwen3_omni_thinker
from audiothink.trainer import AudioGRPOTrainer
from tests.helpers import PROMPT, toy_grpo_args
from tests.test_trainer import _dataset, _full_passes, assert_audio_in_every_pass, spy_audio_forwards

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _section(config: str) -> dict:
    text = yaml.safe_load((ROOT / "configs/model" / f"{config}.yaml").read_text())
    return text.get("model", text)


def _model_cfg(path, config="qwen3_omni_30b_a3b", **overrides):
    cfg = _section(config)
    cfg.update(path=str(path), dtype="float32", **overrides)
    return OmegaConf.create(cfg)


def _messages(n_clips: int):
    return [{"role": "user", "content": [{"type": "audio"}] * n_clips + [{"type": "text", "text": "which?"}]}]


def test_processor_expands_audio_by_qwen3_omnis_rule_and_the_row_checks_count_the_same():
    """13 <|audio_pad|> a 1 s chunk plus the rest's three stride-2 convolutions (transformers' own rule), per clip;
    the row checks' count (audiothink.audio.clip_audio_tokens for the model type) is the processor's."""
    processor = build_qwen3_omni_processor()
    rng = np.random.default_rng(0)
    lengths = (16000, 8000, 3201, 24000, 32000)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in lengths]
    texts = processor.apply_chat_template([_messages(1), _messages(1), _messages(3)], tokenize=False,
                                          add_generation_prompt=True)
    enc = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)
    frames = enc["feature_attention_mask"].sum(-1)
    assert frames.tolist() == [100, 50, 21, 150, 200]  # 10 ms hop, no padding to the window
    expected = [int(n) for n in _get_feat_extract_output_lengths(frames, 50)]
    assert expected == [13, 7, 3, 20, 26]
    counts = (enc["input_ids"] == processor.audio_token_id).sum(-1)
    assert counts.tolist() == [expected[0], expected[1], sum(expected[2:])]
    fe = processor.feature_extractor
    for n, want in zip(lengths, expected, strict=True):
        assert clip_audio_tokens(n, hop_length=fe.hop_length, window=fe.n_samples,
                                 model_type="qwen3_omni_moe_thinker") == want
        # the full checkpoint's config.json says qwen3_omni_moe: the same rule
        assert clip_audio_tokens(n, hop_length=160, window=fe.n_samples, model_type="qwen3_omni_moe") == want
    # one mel frame already gives one token (Qwen2.5-Omni's encoder needs three)
    assert min_clip_samples(fe, "qwen3_omni_moe_thinker") == 1


def test_the_prompt_has_no_system_turn_and_puts_the_audio_first(qwen3_omni_dir):
    """The model card: no system prompt for benchmarks, the question after the audio."""
    processor = Qwen3OmniAudioProcessor.from_pretrained(qwen3_omni_dir)
    (text,) = AudioPrompt(processor).render(["which is higher?"], [2])
    assert text == ("<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|audio_start|><|audio_pad|>"
                    "<|audio_end|>which is higher?<|im_end|>\n<|im_start|>assistant\n")
    assert "system" not in text


def test_saved_processor_reloads_identically(qwen3_omni_dir):
    processor = Qwen3OmniAudioProcessor.from_pretrained(qwen3_omni_dir)
    fresh = build_qwen3_omni_processor()
    text = processor.apply_chat_template([_messages(1)], tokenize=False, add_generation_prompt=True)
    wave = [np.zeros(12000, dtype=np.float32)]
    a = processor(text=text, audio=wave, sampling_rate=16000, return_tensors="pt")
    b = fresh(text=text, audio=wave, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["input_features"], b["input_features"])
    assert processor.audio_token == "<|audio_pad|>" and processor.audio_token_id == fresh.audio_token_id
    assert "input_features" in processor.model_input_names


def _wrapped(peft_model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def test_the_config_loads_the_thinker_and_its_lora_wraps_the_language_models_attention_only(qwen3_omni_dir):
    """model=qwen3_omni_30b_a3b's own lora on the tiny thinker. What it wraps, listed: q/k/v/o of every decoder
    layer; nothing in the audio or vision towers, not the router (mlp.gate), not the experts."""
    cfg = _model_cfg(qwen3_omni_dir)
    model, processor = load_model_and_processor(cfg)
    assert type(model).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"
    assert isinstance(processor, Qwen3OmniAudioProcessor)
    assert not any(n.startswith(("talker", "code2wav")) for n, _ in model.named_parameters())
    layers = model.config.text_config.num_hidden_layers
    wrapped = _wrapped(get_peft_model(model, build_peft_config(cfg.lora, model)))
    assert wrapped == {f"model.language_model.layers.{i}.self_attn.{p}" for i in range(layers) for p in ATTENTION}
    # the towers have modules the regex could have hit (q_proj in the encoder): nothing was skipped by luck
    names = {n for n, _ in model.named_modules()}
    assert "model.audio_tower.layers.0.self_attn.q_proj" in names and "model.audio_tower.proj2" in names


def test_documented_expert_lora_wraps_the_fused_experts_of_the_language_model_only(qwen3_omni_dir):
    """The config's commented `target_parameters` (PEFT's LoRA on 3-D parameters): each layer's fused experts
    get an adapter too, one low-rank update per expert; the towers and the router stay untouched."""
    text = (ROOT / "configs/model/qwen3_omni_30b_a3b.yaml").read_text()
    (documented,) = re.findall(r"^\s*#\s*target_parameters: (\[.*\])\s*$", text, flags=re.M)
    # PEFT's LoRA on parameters takes no dropout (the comment says so)
    lora = {**_section("qwen3_omni_30b_a3b")["lora"], "target_parameters": yaml.safe_load(documented), "dropout": 0.0}
    model = build_qwen3_omni_thinker(build_qwen3_omni_processor())
    experts = model.config.text_config.num_experts
    peft_model = get_peft_model(model, build_peft_config(OmegaConf.create(lora), model))
    wrapped = _wrapped(peft_model)
    layers = model.config.text_config.num_hidden_layers
    assert {f"model.language_model.layers.{i}.mlp.experts" for i in range(layers)} <= wrapped
    assert all(n.startswith("model.language_model.layers.") for n in wrapped), sorted(wrapped)
    assert not any(n.endswith("mlp.gate") for n in wrapped)
    trainable = {n: p.shape for n, p in peft_model.named_parameters() if p.requires_grad}
    expert_a = [s for n, s in trainable.items() if ".mlp.experts." in n and "lora_A" in n]
    assert expert_a and all(s[0] == 16 * experts for s in expert_a), expert_a  # rank 16 for each expert
    # the adapter is a no-op at the start (B = 0) and the experts' forward goes through it
    batch = _encode(build_qwen3_omni_processor(), [_messages(1)], [np.ones(8000, np.float32) * 0.1])
    for name, p in peft_model.named_parameters():
        if ".mlp.experts." in name and "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        tuned = peft_model(**batch).logits
        with peft_model.disable_adapter():
            base = peft_model(**batch).logits
    assert not torch.allclose(tuned, base)


def _encode(processor, chats, waves):
    texts = processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    return processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)


def _trainer(model_dir, toy_files, tmp_path, *, lora: bool, beta=0.04, num_iterations=2, max_steps=2, **model_kw):
    cfg = _model_cfg(model_dir, **model_kw)
    model, processor = load_model_and_processor(cfg)
    args = toy_grpo_args(tmp_path, max_steps=max_steps, beta=beta, num_iterations=num_iterations)
    peft = build_peft_config(OmegaConf.create({**cfg.lora, "r": 4, "alpha": 8, "dropout": 0.0}), model) if lora else None
    return AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format(), Accuracy()], args=args,
        train_dataset=_dataset(toy_files), peft_config=peft, max_audio_seconds=2.0,
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_steps_get_audio_in_every_forward(qwen3_omni_dir, toy_files, tmp_path, lora):
    trainer = _trainer(qwen3_omni_dir, toy_files, tmp_path, lora=lora)
    assert (trainer.ref_model is None) == lora
    with spy_audio_forwards(trainer.model, trainer.ref_model, backbone=Qwen3OmniMoeThinkerModel) as calls:
        trainer.train()
    # generation prefill, old and reference log-probs, 2 policy passes (num_iterations = 2)
    assert_audio_in_every_pass(calls, expected=5)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    # G = 4 copies of each prompt: the encoder ran once per distinct clip, not once per copy
    assert trainer.encoder_passes.requested >= 4 * trainer.encoder_passes.encoded > 0


def test_the_spy_fails_when_the_reference_pass_loses_its_audio(qwen3_omni_dir, toy_files, tmp_path, monkeypatch):
    """The spy test above can fail: score the reference model's log-probs without the features (TRL's own pass,
    without the trainer's audio hook) and the check that every pass had audio fails on that pass alone."""
    trainer = _trainer(qwen3_omni_dir, toy_files, tmp_path, lora=False, max_steps=1)
    real = AudioGRPOTrainer._get_per_token_logps_and_entropies

    def reference_without_audio(self, model, *args, **kwargs):
        if model is self.ref_model:
            return GRPOTrainer._get_per_token_logps_and_entropies(self, model, *args, **kwargs)
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(AudioGRPOTrainer, "_get_per_token_logps_and_entropies", reference_without_audio)
    with spy_audio_forwards(trainer.model, trainer.ref_model, backbone=Qwen3OmniMoeThinkerModel) as calls:
        trainer.train()  # raises nothing: the thinker scores the placeholder embeddings - the trap itself
    with pytest.raises(AssertionError, match="without audio features"):
        assert_audio_in_every_pass(calls, expected=4)
    assert sum(not c["features"] for c in _full_passes(calls)) == 1


@pytest.mark.parametrize("coef", [0.0, 0.001, None], ids=["off", "on", "unset"])
def test_the_router_aux_loss_setting_reaches_the_loss(qwen3_omni_dir, toy_files, tmp_path, coef):
    """model.router_aux_loss_coef: 0.0 (the configs) leaves the load-balancing loss out of the GRPO loss and the
    router logits uncomputed; a weight turns it on (TRL adds weight x aux_loss, logged); unset, TRL would take the
    checkpoint's own 0.001 unasked - why the configs set it."""
    trainer = _trainer(qwen3_omni_dir, toy_files, tmp_path, lora=False, beta=0.0, num_iterations=1, max_steps=1,
                       router_aux_loss_coef=coef)
    text = trainer.model.config.get_text_config()
    if coef is None:
        assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.001  # the tiny config.json's
        return
    assert text.output_router_logits is False and text.router_aux_loss_coef == coef
    assert trainer.aux_loss_enabled == (coef > 0) and trainer.router_aux_loss_coef == coef
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if coef > 0:
        assert logged[0]["aux_loss"] > 0
    else:
        assert "aux_loss" not in logged[0]


@pytest.mark.parametrize("mode", ["think", "direct"])
def test_forced_mode_prefills_the_thinkers_reply(qwen3_omni_dir, toy_files, mode):
    """force_mode on this model: the forced prompt is the free one plus the tag token, the reply starts with it."""
    cfg = _model_cfg(qwen3_omni_dir)
    model, processor = load_model_and_processor(cfg)
    samples = load_samples(toy_files["eval"]).samples[:3]
    plain = generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=6, max_audio_seconds=2.0)
    forced = generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=6, max_audio_seconds=2.0,
                            prefill=force_prefill(mode))
    tag = processor.tokenizer.convert_tokens_to_ids(force_prefill(mode))
    prompts_plain, prompts_forced = ([ids[m.bool()].tolist() for ids, m in
                                      zip(b.inputs["input_ids"], b.inputs["attention_mask"], strict=True)]
                                     for b in (plain, forced))
    assert all(f == p + [tag] for p, f in zip(prompts_plain, prompts_forced, strict=True))
    assert all(t.startswith(force_prefill(mode)) for t in forced.texts)
    assert all(parse(t).thinks == (mode == "think") or not parse(t).well_formed for t in forced.texts)
