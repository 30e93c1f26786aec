"""The Qwen2.5-Omni thinker path on a tiny Omni thinker built offline: processor, loading, LoRA, GRPO step."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerModel
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

from audiothink.models import OmniAudioProcessor
from audiothink.loading import load_model_and_processor
from audiothink.toy.omni import build_omni_processor, build_omni_thinker, save_tiny_omni
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Accuracy, AdaptiveThink, Format
from tests.helpers import toy_grpo_args
from tests.test_trainer import _dataset, _full_passes, assert_audio_in_every_pass, spy_audio_forwards

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _omni_model_cfg(path):
    from omegaconf import OmegaConf

    cfg = yaml.safe_load((ROOT / "configs/model/qwen2_5_omni_7b.yaml").read_text())["model"]
    cfg.update(path=str(path), dtype="float32")
    return OmegaConf.create(cfg)


def _messages(n_clips: int):
    return [{"role": "user", "content": [{"type": "audio"}] * n_clips + [{"type": "text", "text": "which?"}]}]


def test_processor_expands_audio_like_qwen2_5_omni():
    """One <|AUDIO|> per encoder output frame, by Qwen2.5-Omni's own length rule, for each clip."""
    processor = build_omni_processor()
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 8000, 3201, 12000)]
    texts = processor.apply_chat_template([_messages(1), _messages(1), _messages(2)], tokenize=False,
                                          add_generation_prompt=True)
    enc = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)
    frames = enc["feature_attention_mask"].sum(-1)
    expected = _get_feat_extract_output_lengths(frames)
    counts = (enc["input_ids"] == processor.audio_token_id).sum(-1)
    assert counts.tolist() == [int(expected[0]), int(expected[1]), int(expected[2] + expected[3])]
    assert frames.tolist() == [100, 50, 21, 75]  # 10 ms hop: variable lengths, no padding to the window


def test_saved_processor_reloads_identically(omni_dir):
    processor = OmniAudioProcessor.from_pretrained(omni_dir)
    fresh = build_omni_processor()
    text = processor.apply_chat_template([_messages(1)], tokenize=False, add_generation_prompt=True)
    wave = [np.zeros(12000, dtype=np.float32)]
    a = processor(text=text, audio=wave, sampling_rate=16000, return_tensors="pt")
    b = fresh(text=text, audio=wave, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert processor.audio_token == "<|AUDIO|>" and processor.audio_token_id == fresh.audio_token_id


def test_processor_refuses_a_tokenizer_without_audio_token(toy_model_dir):
    from transformers import AutoProcessor

    base = AutoProcessor.from_pretrained(toy_model_dir)  # Qwen2-Audio's tokenizer: no named audio_token
    with pytest.raises(ValueError, match="audio_token"):
        OmniAudioProcessor(feature_extractor=base.feature_extractor, tokenizer=base.tokenizer)


def test_config_loads_the_thinker_and_lora_targets_its_language_model_only(omni_dir):
    from peft import get_peft_model

    from audiothink.loading import build_peft_config

    cfg = _omni_model_cfg(omni_dir)
    model, processor = load_model_and_processor(cfg)
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert isinstance(processor, OmniAudioProcessor)
    peft_model = get_peft_model(model, build_peft_config(cfg.lora))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert wrapped
    assert all(".language_model.layers." in n for n in wrapped), sorted(wrapped)[:5]
    # every projection of every decoder layer, and nothing in the audio or vision towers
    layers = peft_model.base_model.model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * layers
    assert not any(re.search(r"audio_tower|visual", n) for n in wrapped)


def _omni_trainer(omni_dir, toy_files, tmp_path, *, lora: bool, beta=0.04, num_iterations=2, max_steps=2):
    model, processor = load_model_and_processor(_omni_model_cfg(omni_dir))
    args = toy_grpo_args(tmp_path, max_steps=max_steps, beta=beta, num_iterations=num_iterations)
    peft = None
    if lora:
        peft = LoraConfig(r=4, lora_alpha=8, target_modules=_omni_model_cfg(omni_dir).lora.target_modules,
                          task_type="CAUSAL_LM")
    return AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format(), Accuracy()], args=args,
        train_dataset=_dataset(toy_files), peft_config=peft, max_audio_seconds=2.0,
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_omni_grpo_step_gets_audio_in_every_forward(omni_dir, toy_files, tmp_path, lora):
    trainer = _omni_trainer(omni_dir, toy_files, tmp_path, lora=lora)
    with spy_audio_forwards(trainer.model, trainer.ref_model, backbone=Qwen2_5OmniThinkerModel) as calls:
        trainer.train()
    # generation prefill, old and reference log-probs, 2 policy passes (num_iterations = 2)
    assert_audio_in_every_pass(calls, expected=5)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    # G = 4 copies of each prompt: the encoder ran once per distinct clip, not once per copy
    assert trainer.encoder_passes.requested >= 4 * trainer.encoder_passes.encoded > 0


def test_omni_spy_catches_a_text_only_logprob_pass(omni_dir, toy_files, tmp_path, monkeypatch):
    """The Omni spy test can fail: drop the log-prob passes' features and it sees it."""
    trainer = _omni_trainer(omni_dir, toy_files, tmp_path, lora=False, max_steps=1)
    monkeypatch.setattr("audiothink.trainer.unpack_clips", lambda rows, start, end: {})
    with spy_audio_forwards(trainer.model, trainer.ref_model, backbone=Qwen2_5OmniThinkerModel) as calls:
        trainer.train()  # raises nothing: the thinker scores the placeholder embeddings - the trap itself
    assert any(not c["features"] for c in _full_passes(calls))


def _documented_regexes(config: str) -> list[str]:
    """The alternative target_modules regexes written in a model config's comments."""
    text = (ROOT / "configs/model" / config).read_text()
    return re.findall(r"^\s*#.*?'(\^model.*?)'\s*$", text, flags=re.M)


def _wrapped(model, regex: str) -> set[str]:
    from peft import get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=regex, task_type="CAUSAL_LM"))
    return {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in peft_model.named_parameters()
            if ".lora_A" in n}


def test_documented_lora_scopes_wrap_what_they_say(toy_model_dir):
    from tests.helpers import load_toy

    projector, encoder = _documented_regexes("qwen2_audio_7b.yaml")
    wrapped = _wrapped(load_toy(toy_model_dir)[0], projector)
    assert "model.multi_modal_projector.linear" in wrapped
    assert not any("audio_tower" in n for n in wrapped)
    wrapped = _wrapped(load_toy(toy_model_dir)[0], encoder)
    assert {"model.audio_tower.layers.0.self_attn.out_proj", "model.audio_tower.layers.1.fc2"} <= wrapped
    assert any(".language_model." in n for n in wrapped)

    (omni_encoder,) = _documented_regexes("qwen2_5_omni_7b.yaml")
    wrapped = _wrapped(build_omni_thinker(build_omni_processor()), omni_encoder)
    assert {"model.audio_tower.proj", "model.audio_tower.layers.0.self_attn.q_proj"} <= wrapped
    assert any(".language_model." in n for n in wrapped) and not any(".visual." in n for n in wrapped)


def test_static_cache_generation_matches_dynamic():
    """The fast rollout's static KV cache keeps Omni's 3-D (audio-length dependent) positions right."""
    processor = build_omni_processor()
    model = build_omni_thinker(processor).eval()
    texts = processor.apply_chat_template([_messages(1), _messages(2)], tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(3)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 8000, 4000)]
    enc = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)
    dynamic = model.generate(**enc, max_new_tokens=8, do_sample=False)
    static = model.generate(**enc, max_new_tokens=8, do_sample=False, cache_implementation="static",
                            disable_compile=True)
    assert torch.equal(dynamic, static)


@pytest.mark.e2e
def test_cli_trains_and_evaluates_the_omni_config(omni_dir, tmp_path):
    """`model=qwen2_5_omni_7b` through both entry points, on the tiny thinker: LoRA run, then its adapter scored."""
    import json
    import subprocess
    import sys

    common = [f"model.path={omni_dir}", "model.dtype=float32"]
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "audiothink.train", "model=qwen2_5_omni_7b", *common, "trainer.max_steps=2",
         "trainer.max_completion_length=16", "trainer.per_device_train_batch_size=8",
         "trainer.gradient_accumulation_steps=1", "trainer.report_to=[]", "eval.num_samples=0",
         f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert "OmniAudioProcessor" in (run / "final" / "processor_config.json").read_text()

    out = tmp_path / "eval"
    evaluate = subprocess.run(
        [sys.executable, "-m", "audiothink.evaluate", "benchmark=toy", "model=qwen2_5_omni_7b", *common,
         f"adapter={run / 'final'}", "eval.max_new_tokens=8", "eval.limit=8", "eval.charts=false",
         f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "over 8 samples" in evaluate.stdout
    assert "forgetting monitor" in evaluate.stdout  # the adapter was on: KL(tuned || base) measured


@pytest.mark.slow
def test_compiled_static_cache_decode_matches_eager():
    """The fast rollout (static cache + torch.compile'd decode) on the Omni thinker: one graph, same tokens.

    transformers compiles the decode step on CUDA only unless told otherwise; this compiles it on CPU
    (~30 s) to check that the thinker's decode traces (3-D positions, audio-dependent rope deltas) and
    gives the eager tokens.
    """
    import torch._dynamo
    from transformers import CompileConfig

    processor = build_omni_processor()
    model = build_omni_thinker(processor).eval()
    texts = processor.apply_chat_template([_messages(1), _messages(1)], tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(4)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 8000)]
    enc = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)
    eager = model.generate(**enc, max_new_tokens=8, do_sample=False)
    config = CompileConfig()
    config._compile_all_devices = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):  # the second call reuses the graph
        compiled = model.generate(**enc, max_new_tokens=8, do_sample=False, cache_implementation="static",
                                  compile_config=config)
        assert torch.equal(eager, compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
