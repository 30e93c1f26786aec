"""The vLLM rollout engine on CPU, with a fake `vllm.LLM`: what AudioGRPOTrainer sends it, what it trains on.

vLLM itself is not installed here (GPU only); the fake implements the part of `LLM` that TRL's colocate
mode uses (`generate`, `reset_prefix_cache`, the `load_weights` of the model runner) and expands audio
placeholders as vLLM's Qwen2-Audio processor does (feature extractor -> mel length -> placeholder count).
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from trl import GRPOConfig, GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration

import audiothink.vllm_rollout as vr
from audiothink.audio import SAMPLE_RATE
from audiothink.plumbing.errors import ConfigError
from audiothink.trainer import AudioGRPOTrainer
from audiothink.vllm_rollout import AudioVLLMGeneration, audio_token_ids, check_vllm_config, rollout_grpo_fields
from audiothink.rewards import Accuracy, Format
from tests.helpers import chat_prompt_ids, load_toy, mixed_clip_dataset, random_waves, toy_grpo_args
from tests.test_trainer import spy_audio_forwards

ROOT = Path(__file__).resolve().parents[1]


class FakeLLM:
    """`vllm.LLM` as TRL's colocate mode uses it. `style`: how the prompt update writes a clip's placeholders
    ("plain": <|AUDIO|> x N, as vLLM's current Qwen2-Audio and Omni processors; "markers": <|audio_bos|>
    <|AUDIO|> x N <|audio_eos|>, as older Qwen2-Audio ones; "off_by_one": a wrong count; "echo": reports
    the prompt it was sent)."""

    def __init__(self, processor, style="plain"):
        self.processor, self.style = processor, style
        self.requests: list[tuple[list[dict], object]] = []
        self.expanded: list[list[int]] = []
        self.loaded: list[str] = []
        model = SimpleNamespace(load_weights=lambda ws: self.loaded.extend(n for n, _ in ws))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))
        )
        tok = processor.tokenizer
        self.completion = tok("<answer>high</answer>")["input_ids"] + [tok.eos_token_id]

    def reset_prefix_cache(self):
        pass

    def _count(self, wave, sr):
        fe = self.processor.feature_extractor
        mel = int(fe(wave, sampling_rate=sr, return_attention_mask=True, padding="max_length")["attention_mask"].sum())
        return ((mel - 1) // 2 + 1 - 2) // 2 + 1 + (1 if self.style == "off_by_one" else 0)

    def generate(self, rows, sampling_params=None, use_tqdm=False):
        self.requests.append((rows, sampling_params))
        audio_id, bos_id, eos_id = audio_token_ids(self.processor)
        outs = []
        for row in rows:
            counts = iter([self._count(w, sr) for w, sr in row.get("multi_modal_data", {}).get("audio", [])])
            ids = []
            for t in row["prompt_token_ids"]:
                if t != audio_id:
                    ids.append(t)
                    continue
                run = [audio_id] * next(counts)
                ids += [bos_id, *run, eos_id] if self.style == "markers" else run
            self.expanded.append(ids)
            reported = row["prompt_token_ids"] if self.style == "echo" else ids
            lps = [{t: SimpleNamespace(logprob=-0.7, rank=1)} for t in self.completion]
            outs.append(SimpleNamespace(prompt_token_ids=reported,
                                        outputs=[SimpleNamespace(token_ids=list(self.completion), logprobs=lps)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    """Pretend vLLM is installed; TRL's engine gets a FakeLLM; sampling params stay a plain dict."""
    made = {}

    def init(self):
        self.llm = made.setdefault("llm", FakeLLM(made["processor"], made.get("style", "plain")))

    monkeypatch.setattr(vr, "vllm_installed", lambda: True)
    monkeypatch.setattr(VLLMGeneration, "_init_vllm", init)
    monkeypatch.setattr(AudioVLLMGeneration, "_sampling_params", lambda self, kwargs: dict(kwargs))
    return made


# -- TRL's API that the engine relies on (pinned, like tests/test_trainer_signatures.py) ------------------


def test_trl_vllm_api_unchanged():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(VLLMGeneration.generate) == ["self", "prompts", "images", "num_generations", "profiler"]
    assert params(VLLMGeneration._fix_param_name_to_vllm) == ["self", "name", "extra_prefixes"]
    turn = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "self.vllm_generation.generate(" in turn and "prompts=prompt_ids" in turn and "images=images" in turn
    assert "self.vllm_generation.sync_weights()" in turn
    sync = inspect.getsource(VLLMGeneration._iter_named_params)
    assert sync.count("self._fix_param_name_to_vllm(") >= 2  # plain and PEFT paths both name through it
    assert "model_runner.model.load_weights" in inspect.getsource(VLLMGeneration.sync_weights)
    ours = inspect.signature(AudioVLLMGeneration.generate).parameters
    assert list(ours)[:5] == ["self", "prompts", "images", "num_generations", "profiler"]


def test_vllm_extra_is_within_trls_supported_range():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    (vllm_pin,) = [p for p in pins if re.match(r"vllm\b", p)]
    trl_range = inspect.getsource(__import__("trl.import_utils", fromlist=["x"]).is_vllm_available)
    low, high = re.search(r'Version\("([\d.]+)"\) <= _vllm_base_version <= Version\("([\d.]+)"\)', trl_range).groups()
    version = re.fullmatch(r"vllm==([\d.]+)", vllm_pin).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(version) <= as_tuple(high)


# -- clear errors -------------------------------------------------------------------------------------------


def _args(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[], **kw)


def test_errors_before_an_engine_starts(monkeypatch, toy_model_dir, toy_files, tmp_path):
    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[vllm]"')):
        check_vllm_config(_args(tmp_path, use_vllm=True))
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[vllm]"')):
        check_vllm_config(_args(tmp_path, use_vllm=True, vllm_mode="server"))  # server mode carries audio now
    bad = _args(tmp_path, use_vllm=True)
    bad.vllm_mode = "remote"
    with pytest.raises(ValueError, match="'colocate' or 'server', got 'remote'"):
        check_vllm_config(bad)
    check_vllm_config(_args(tmp_path))  # the HF engine: nothing to check
    # the trainer says it before TRL tries to start vLLM (TRL's own message would say `pip install trl[vllm]`)
    model, processor = load_toy(toy_model_dir)
    with pytest.raises(ImportError, match="GPU"):
        AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()],
                         args=toy_grpo_args(tmp_path, use_vllm=True), train_dataset=mixed_clip_dataset(toy_files, 4))


def test_rollout_config_maps_to_grpo_fields(monkeypatch, tmp_path):
    cfg = lambda **kw: OmegaConf.create({"fast": False, "engine": "hf", "vllm_mode": "colocate",  # noqa: E731
                                          "gpu_memory_utilization": 0.3, "server_host": "0.0.0.0",
                                          "server_port": 8000} | kw)
    assert rollout_grpo_fields(cfg()) == {"use_vllm": False}
    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=re.escape('pip install -e ".[vllm]"')):
        rollout_grpo_fields(cfg(engine="vllm"))
    monkeypatch.setattr(vr, "vllm_installed", lambda: True)
    fields = rollout_grpo_fields(cfg(engine="vllm", gpu_memory_utilization=0.45))
    assert fields == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.45,
                      "vllm_server_host": "0.0.0.0", "vllm_server_port": 8000}
    args = _args(tmp_path, **fields)
    assert args.use_vllm and args.vllm_gpu_memory_utilization == 0.45
    server = rollout_grpo_fields(cfg(engine="vllm", vllm_mode="server", server_host="10.0.0.1", server_port=8001))
    assert server == {"use_vllm": True, "vllm_mode": "server", "vllm_gpu_memory_utilization": 0.3,
                      "vllm_server_host": "10.0.0.1", "vllm_server_port": 8001}
    assert _args(tmp_path, **server).vllm_mode == "server"
    with pytest.raises(ConfigError, match="'colocate' or 'server', got 'remote'"):
        rollout_grpo_fields(cfg(engine="vllm", vllm_mode="remote"))
    with pytest.raises(ConfigError, match="rollout.fast"):
        rollout_grpo_fields(cfg(engine="vllm", fast=True))
    with pytest.raises(ConfigError, match="'hf' or 'vllm'"):
        rollout_grpo_fields(cfg(engine="sglang"))


# -- the engine ---------------------------------------------------------------------------------------------


def _engine(fake_vllm, toy_model_dir, style="plain"):
    model, processor = load_toy(toy_model_dir)
    fake_vllm.update(processor=processor, style=style)
    base = VLLMGeneration(model=model, accelerator=Accelerator(cpu=True), processing_class=processor.tokenizer,
                          mode="colocate", max_completion_length=8, generation_kwargs={"suppress_tokens": [3, 4]})
    return AudioVLLMGeneration.adopt(base, processor, waves=lambda: None), processor


@pytest.mark.parametrize("style", ["plain", "echo"])
def test_generate_sends_unexpanded_ids_and_audio(fake_vllm, toy_model_dir, style):
    engine, processor = _engine(fake_vllm, toy_model_dir, style)
    a, b = random_waves(0.7, 3.0)
    clip_sets = [[a], [a, b], [b]]
    training = chat_prompt_ids(processor, clip_sets)
    prompt_ids, completions, logprobs, _ = engine.generate(training, None, 1, waves=clip_sets)
    llm = engine.llm
    (rows, params), = llm.requests
    audio_id, bos_id, eos_id = audio_token_ids(processor)
    for row, clips, ids in zip(rows, clip_sets, training, strict=True):
        assert row["prompt_token_ids"].count(audio_id) == len(clips) < ids.count(audio_id)
        assert [sr for _, sr in row["multi_modal_data"]["audio"]] == [SAMPLE_RATE] * len(clips)
        assert all(w is c for (w, _), c in zip(row["multi_modal_data"]["audio"], clips, strict=True))
    assert llm.expanded == training  # vLLM's expansion is the training prompt
    assert prompt_ids == training and completions == [llm.completion] * 3
    assert logprobs == [[[-0.7]] * len(llm.completion)] * 3
    # the trainer's suppress_tokens reach vLLM as a logit bias (SamplingParams has no suppress_tokens)
    assert "suppress_tokens" not in params and params["logit_bias"] == {3: -100.0, 4: -100.0}
    assert params["max_tokens"] == 8 and params["n"] == 1


def test_generate_adapts_to_a_vllm_that_writes_the_markers(fake_vllm, toy_model_dir, caplog):
    engine, processor = _engine(fake_vllm, toy_model_dir, "markers")
    clip_sets = [[w] for w in random_waves(0.5, 1.5)]
    training = chat_prompt_ids(processor, clip_sets)
    engine.generate(training, None, 1, waves=clip_sets)
    llm = engine.llm
    assert len(llm.requests) == 2 and "writes <|audio_bos|>" in caplog.text  # found out, asked again
    _, bos_id, eos_id = audio_token_ids(processor)
    first, second = (r for r, _ in llm.requests)
    assert all(bos_id in row["prompt_token_ids"] for row in first)
    assert all(bos_id not in row["prompt_token_ids"] and eos_id not in row["prompt_token_ids"] for row in second)
    assert llm.expanded[-2:] == training
    engine.generate(training, None, 1, waves=clip_sets)  # from then on, one request
    assert len(llm.requests) == 3 and llm.expanded[-2:] == training


def test_generate_refuses_a_different_expansion(fake_vllm, toy_model_dir):
    engine, processor = _engine(fake_vllm, toy_model_dir, "off_by_one")
    clip_sets = [[w] for w in random_waves(0.5)]
    with pytest.raises(RuntimeError, match="differs from the .*training prompt"):
        engine.generate(chat_prompt_ids(processor, clip_sets), None, 1, waves=clip_sets)


def test_generate_needs_the_audio(fake_vllm, toy_model_dir):
    engine, processor = _engine(fake_vllm, toy_model_dir)
    clip_sets = [[w] for w in random_waves(0.5)]
    with pytest.raises(RuntimeError, match="without the batch's audio"):
        engine.generate(chat_prompt_ids(processor, clip_sets), None, 1)
    with pytest.raises(ValueError, match="images"):
        engine.generate(chat_prompt_ids(processor, clip_sets), [["img"]], 1, waves=clip_sets)


# -- the trainer through the vLLM path ------------------------------------------------------------------


def test_trainer_step_through_vllm(fake_vllm, toy_model_dir, toy_files, tmp_path):
    model, processor = load_toy(toy_model_dir)
    fake_vllm.update(processor=processor)
    args = toy_grpo_args(tmp_path, use_vllm=True, vllm_mode="colocate", beta=0.04, max_steps=1)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format(), Accuracy()], args=args,
                               train_dataset=mixed_clip_dataset(toy_files), max_audio_seconds=2.0)
    assert isinstance(trainer.vllm_generation, AudioVLLMGeneration)
    with spy_audio_forwards(trainer.model, trainer.ref_model) as calls:
        trainer.train()
    llm = fake_vllm["llm"]

    # vLLM got: unexpanded ids (one <|AUDIO|> per clip, between its markers) and the clips at 16 kHz
    (rows, params), = llm.requests
    assert len(rows) == args.per_device_train_batch_size
    audio_id, bos_id, eos_id = audio_token_ids(processor)
    n_clips = []
    for row in rows:
        ids, audio = row["prompt_token_ids"], row["multi_modal_data"]["audio"]
        at = [i for i, t in enumerate(ids) if t == audio_id]
        assert len(at) == len(audio) >= 1 and all(ids[i - 1] == bos_id and ids[i + 1] == eos_id for i in at)
        assert all(sr == SAMPLE_RATE and isinstance(w, np.ndarray) and w.ndim == 1 and 0 < len(w) <= 2 * SAMPLE_RATE
                   for w, sr in audio)
        n_clips.append(len(audio))
    assert set(n_clips) == {1, 4}  # one- and four-clip prompts (toy v3)
    assert params["logit_bias"] == {t: -100.0 for t in trainer.banned_token_ids}

    # training: no HF generate (no one-token decode steps); every log-prob pass (old, reference, policy)
    # had the audio features and ran on the expanded ids vLLM's expansion gives
    assert calls and all(c["seq_len"] > 1 for c in calls)
    assert all(c["features"] and c["mask"] for c in calls)
    per_row = [ids.count(audio_id) for ids in llm.expanded]
    whole_batch = [c for c in calls if c["rows"] == len(per_row)]
    assert whole_batch and all(c["audio_tokens"] == sum(per_row) for c in whole_batch)
    assert all(c["audio_tokens"] >= c["rows"] * min(per_row) for c in calls)
    assert len(calls) >= 2  # reference + policy (old log-probs too: vLLM's importance sampling correction)

    # weights went to vLLM once, under checkpoint names
    assert "language_model.model.embed_tokens.weight" in llm.loaded
    assert not [n for n in llm.loaded if n.startswith("model.")]
    assert len(llm.loaded) == len(set(llm.loaded)) == sum(1 for _ in trainer.model.parameters())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and np.isfinite(logs[0]["loss"])


def test_trainer_logprob_passes_see_vllms_prompts(fake_vllm, toy_model_dir, toy_files, tmp_path, monkeypatch):
    """Token for token: the prompts of the training batch are the prompts vLLM expanded and sampled from."""
    model, processor = load_toy(toy_model_dir)
    fake_vllm.update(processor=processor)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()],
                               args=toy_grpo_args(tmp_path, use_vllm=True), train_dataset=mixed_clip_dataset(toy_files),
                               max_audio_seconds=2.0)
    batch = [trainer.train_dataset[i] for i in range(2) for _ in range(4)]
    trainer.model.train()
    out = trainer._generate_and_score_completions(batch)
    llm = fake_vllm["llm"]
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(out["prompt_ids"], out["prompt_mask"], strict=True)]
    assert prompts == llm.expanded
    assert any(k.startswith("audio__") for k in out)  # the features travel with the batch
    assert out["completion_ids"][0][: len(llm.completion)].tolist() == llm.completion
    # vLLM's sampling log-probs are kept for TRL's importance-sampling correction
    assert out["sampling_per_token_logps"].shape == out["completion_ids"].shape
    assert torch.isfinite(out["old_per_token_logps"]).all()
