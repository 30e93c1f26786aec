"""The GRPO step at 7B scale on one GPU, both 7B models, in one run: every figure of issue 12, as one JSON file
(and the Qwen3-Omni-30B-A3B thinker, a mixture of experts, by itself with --model qwen3_omni_30b_a3b).

    python bench/gpu_step.py                          # both models, <= --budget-s (480 s) on an H100/H200
    python bench/gpu_step.py --model qwen2_audio_7b   # one model (qwen2_5_omni_7b: the Omni thinker)
    python bench/gpu_step.py --model qwen3_omni_30b_a3b   # the Qwen3-Omni thinker (MoE), alone: not in "all"
    python bench/gpu_step.py --out /tmp/x.json --budget-s 600
    python bench/gpu_step.py --prompts 2 --new-tokens 32   # a quick smoke run (figures not comparable)

No checkpoint can be downloaded where this runs, so each model is the real architecture built from its
published config with random bf16 weights; the tokenizer is the embedded toy's (with Omni's extra special
tokens for the thinker; its ids fit both vocabularies, and the LM head still projects onto all 156,032 /
152,064 rows). The Omni thinker's vision tower is built (it holds memory) but never runs. Speed and memory do
not depend on the weights' values. To make every completion exactly --new-tokens long (random weights
rarely sample EOS, but a run must not depend on it), generation uses min_new_tokens.

What runs is the project's own AudioGRPOTrainer (TRL's loop, our audio path): 8 prompts x G = 8 with 10 s
clips, 256 new tokens, LoRA r = 16 on the language model, beta = 0.04 (reference = adapter disabled), update
in micro-batches of 16 rows without activation checkpointing. Per model, in this order:

1. build (required): the model, LoRA, the trainer;
2. training loop (required): --plain-steps optimizer steps with plain HF generate, then --fast-steps with the
   fast path switched on between two steps (trainer.enable_fast_generation: static KV cache, torch.compile'd
   decode, prompts padded to 64-token buckets). The first fast step compiles; the last step of each kind is
   reported. Timers wrap the trainer's own methods; a callback clocks the optimizer steps;
3. liger (optional): the update of the last plain step's batch timed again, Liger off then on (Liger's
   RMSNorm, SwiGLU and RoPE put into the built model in place of transformers' own, the same modules
   `model.liger_kernels=true` builds, then put back); "not installed" without liger-kernel;
4. exactness (required for the Omni thinkers, optional for Qwen2-Audio): 2 prompts decoded greedily by the fast path
   (in a batch of the compiled shape) and by plain generate; same tokens or not, the ids on a mismatch, and the
   plain model's logit margin between the two tokens where they part (a near-tie says bf16 rounding, a wide
   margin a bug);
5. bucket_b, bucket_c (optional): rollouts whose prompts land in the next two 64-token buckets, first call
   (compiles or not) and second call; warm_cache (optional): dynamo's in-memory state reset, then the first
   bucket again, so the compile is redone from the on-disk caches (what a second run or process pays).

Budget (--budget-s, default 480 s = 8 min): each part has an estimate (ESTIMATE_S, from the H100 figures
in bench/RESULTS.md where measured; replaced by this run's own time once a part has run for the first
model). An optional part runs only if it and everything still to come that is required or more important fit
in what is left; a skipped part is recorded under "skipped" with the reason. Required parts always run.
The JSON is rewritten after every part, so a run cut short keeps what it measured.

Figures, per model (JSON "models".<model>; all measured in this run):
- rollout.plain / rollout.fast: generated tokens / rollout seconds (rows x new tokens), and pct_of_floor =
  100 x floor / rollout seconds. The floor is the memory-bound time of the same decode: per decode step the
  language model's bf16 weights + the KV cache of the tokens so far, read once at the measured copy
  bandwidth (rollout.floor_*). The fast figure is the last fast step's rollout (compiled, steady).
- update: the policy forward + backward over the step's micro-batches (the optimizer step, milliseconds for
  LoRA, is in "other"); mfu = 4 x N x T / (seconds x measured bf16 matmul rate), N = language-model
  parameters (with the LM head; for the mixture of experts the active ones: its routed share of the experts,
  params_lm_active), T = tokens in the update (prompt + completion, padding excluded); 4 =
  forward 2 + backward to the activations 2 (LoRA leaves the base weights without gradient). update.s/mfu:
  in the training loop's last plain step; update.liger_off / liger_on: the same batch timed again each way.
- peak_GiB: peak GPU memory over the training loop (per step in step.*.peak_GiB).
- step.plain / step.fast: one optimizer step in steady state (from the end of the step before to the end of
  this one: data, rollout, scoring, update, optimizer, logging), split into rollout, reference (the
  reference model's log-prob pass), rewards, update, other (= the rest: tokenizing, audio features, the
  optimizer step, logging). tokens_per_s_per_gpu = (prompt + completion tokens of the step's rows, padding
  excluded) / step seconds / GPUs: the whole-step throughput that RL trainers usually report per GPU;
  completion_tokens_per_s_per_gpu counts the generated tokens only.
- fast_path: mode (compiled or eager static cache: transformers compiles only on GPU-class devices, so on
  CPU the fast path is an eager static cache), the compile-cache folder, and per bucket: the static cache
  length used (it never shrinks: a later bucket's rollouts decode with the longest cache seen so far), the
  first call's and a steady call's seconds, compile_s = first - steady, and the graphs dynamo compiled and
  inductor's FX graph cache hits / misses during the first call.
- exactness; encoder (clip passes asked vs run in the training loop); skipped; phase_s (seconds per part);
  allocated_after_build_GiB and trainers_alive_before_build (0: the model before was freed).

Top level: device, versions, copy bandwidth and matmul rate, the AVQA bucket estimate (avqa_buckets:
how many 64-token prompt buckets a 1,000-step AVQA run hits; an estimate, see avqa_bucket_estimate), args,
budget, elapsed, complete (every model ran its required parts without error).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
import types
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu_step.py` from a checkout, without installing the package
    sys.path.insert(0, str(ROOT))

QWEN2_AUDIO_7B = {
    # published Qwen2-Audio-7B-Instruct dimensions
    "audio_config": {
        "model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32,
        "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280, "max_source_positions": 1500,
    },
    "text_config": {
        "model_type": "qwen2", "vocab_size": 156032, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
}


QWEN2_5_OMNI_7B_THINKER = {
    # published Qwen2.5-Omni-7B thinker dimensions (config.json, thinker_config)
    "audio_config": {
        "num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
        "d_model": 1280, "max_source_positions": 1500, "n_window": 100, "output_dim": 3584,
    },
    "vision_config": {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "text_config": {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
}
QWEN3_OMNI_30B_A3B_THINKER = {
    # published Qwen3-Omni-30B-A3B-Instruct thinker dimensions (config.json, thinker_config): a mixture of experts,
    # 128 experts of 768 in each of 48 layers, 8 routed per token
    "audio_config": {
        "num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
        "d_model": 1280, "max_source_positions": 1500, "n_window": 50, "n_window_infer": 800,
        "downsample_hidden_size": 480, "output_dim": 2048,
    },
    "vision_config": {
        "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "out_hidden_size": 2048,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "text_config": {
        "vocab_size": 152064, "hidden_size": 2048, "intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "num_experts": 128, "num_experts_per_tok": 8,
        "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "router_aux_loss_coef": 0.001, "output_router_logits": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [24, 20, 20],
                            "interleaved": True, "mrope_interleaved": True},
    },
    "position_id_per_seconds": 13,
}
MODELS = {"qwen2_audio_7b": "Qwen2-Audio-7B-Instruct", "qwen2_5_omni_7b": "Qwen2.5-Omni-7B thinker",
          "qwen3_omni_30b_a3b": "Qwen3-Omni-30B-A3B thinker"}
MODEL_CLASSES = {"qwen2_audio_7b": "Qwen2AudioForConditionalGeneration",
                 "qwen2_5_omni_7b": "Qwen2_5OmniThinkerForConditionalGeneration",
                 "qwen3_omni_30b_a3b": "Qwen3OmniMoeThinkerForConditionalGeneration"}
# --model all: the two 7B models (~17 GB of bf16 weights each, one after the other in the default budget). The
# Qwen3-Omni thinker (~63 GB of bf16 weights for its ~31.7 B parameters) runs alone: --model qwen3_omni_30b_a3b.
ALL = ("qwen2_audio_7b", "qwen2_5_omni_7b")

# the models whose fast-path exactness is a required part (3-D positions that depend on the audio lengths)
EXACTNESS_REQUIRED = ("qwen2_5_omni_7b", "qwen3_omni_30b_a3b")

CUDA = torch.cuda.is_available()  # the benchmark is for a GPU; tests run its code paths on CPU at toy size
LIVE_TRAINERS = weakref.WeakSet()  # trainers not yet freed: one model at a time on the GPU

# Seconds each part takes on one H100 at the default shape (8 prompts x G = 8, 10 s audio, 256 new tokens),
# for the budget guard. Measured ones are from bench/RESULTS.md (issue 5's runs); the others are stated guesses.
# Once a part has run for one model, its measured time replaces the estimate for the next.
ESTIMATE_S = {
    "build": 30.0,          # model (random bf16 init of ~8.4 B parameters) + LoRA + trainer: never recorded; guess
    "plain_step": 26.0,     # measured: rollout 17.1-19.0 + reference 1.7 + update 4.0-4.2 + other 0.6
    "fast_compile": 68.0,   # measured: first fast rollout in a bucket 54.8-73.0 s, less the 7.2 s rollout in it
    "fast_step": 15.0,      # measured parts: rollout 7.2-7.9 + reference 1.7 + update 4.2 + other 0.6
    "liger": 17.0,          # two update passes (4.2 s measured) + warm-ups + Triton JIT of Liger's kernels (guess)
    "exactness": 20.0,      # fast greedy at the compiled shape 7.2 s + plain greedy on 2 rows (~7 s, guess) + margin
    "bucket_b": 80.0,       # measured: the second bucket's first call 58.8 s, + a steady call 7.9 s, + tokenizing
    "bucket_c": 30.0,       # the third bucket: no new graph expected (CPU check), CUDA-graph capture + 2 calls: guess
    "warm_cache": 40.0,     # dynamo re-trace with the on-disk caches hit + 2 calls: guess
}
# optional parts, most important first (a part never runs at the cost of a more important one still to come)
PRIORITY = {"liger": 1, "exactness": 2, "bucket_b": 3, "bucket_c": 4, "warm_cache": 5}


def sync():
    if CUDA:
        torch.cuda.synchronize()


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if CUDA else 0


def reset_peak():
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def measure_bandwidth(gib_size: float = 4.0, device: str = "cuda") -> float:
    """Device-to-device copy: bytes read + written per second."""
    n = int(gib_size * 2**30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    sync()
    dt = (time.perf_counter() - t0) / reps
    del a, b
    return 2 * n * 2 / dt


def measure_matmul(n: int = 8192, device: str = "cuda") -> float:
    """bf16 matmul rate (FLOP/s) of an n x n x n product, random data, mean of 10 after 3 warm-ups."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync()
    dt = (time.perf_counter() - t0) / reps
    del a, b
    return 2 * n**3 / dt


def compile_counters() -> dict[str, int]:
    """torch.compile's running totals: graphs dynamo compiled, inductor FX-graph cache hits / misses."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "fx_cache_hits": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
        "fx_cache_misses": int(counters["inductor"].get("fxgraph_cache_miss", 0)),
    }


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


# ----------------------------------------------------------------------------------------------------------
# timers


class Timers:
    """Seconds per named part, per optimizer step (the trainer's global_step when the part started)."""

    def __init__(self, step_of=lambda: 0):
        self.step_of = step_of
        self.t: dict[str, dict[int, float]] = {}

    @contextmanager
    def time(self, name):
        step = self.step_of()
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            per_step = self.t.setdefault(name, {})
            per_step[step] = per_step.get(step, 0.0) + time.perf_counter() - t0

    def get(self, name, step) -> float:
        return self.t.get(name, {}).get(step, 0.0)

    def wrap(self, obj, method, name, after=None):
        original = getattr(obj, method)

        def wrapped(*a, **k):
            with self.time(name):
                result = original(*a, **k)
            if after is not None:
                after(result)
            return result

        setattr(obj, method, wrapped)


def step_clock(on_step_end):
    """A TrainerCallback calling on_step_end(global_step) right after each optimizer step (GPU synced)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            reset_peak()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            on_step_end(state.global_step)

    return StepClock()


# ----------------------------------------------------------------------------------------------------------
# budget


class Budget:
    """Which parts fit in `seconds` from `start`: see the module docstring ("Budget")."""

    def __init__(self, seconds: float, estimates: dict[str, float], start: float | None = None, clock=time.perf_counter):
        self.seconds, self.clock = seconds, clock
        self.start = clock() if start is None else start
        self.estimates = dict(estimates)
        self.measured: dict[str, float] = {}
        self.parts: list[dict] = []  # in run order: model, name, required, priority, state (pending/run/skipped)

    def add(self, model: str, name: str, required: bool) -> None:
        self.parts.append({"model": model, "name": name, "required": required,
                           "priority": 0 if required else PRIORITY[name], "state": "pending"})

    def estimate(self, name: str) -> float:
        return self.measured.get(name, self.estimates[name])

    def elapsed(self) -> float:
        return self.clock() - self.start

    def _part(self, model, name):
        return next(p for p in self.parts if p["model"] == model and p["name"] == name)

    def required_total(self) -> float:
        return sum(self.estimate(p["name"]) for p in self.parts if p["required"])

    def decide(self, model: str, name: str) -> str | None:
        """None: run it (the part is marked running). Else the reason it is skipped (and it is marked so)."""
        part = self._part(model, name)
        index = self.parts.index(part)
        kept = [p for p in self.parts[index + 1:]
                if p["state"] == "pending" and (p["required"] or p["priority"] < part["priority"])]
        need, reserve = self.estimate(name), sum(self.estimate(p["name"]) for p in kept)
        left = self.seconds - self.elapsed()
        if part["required"] or need + reserve <= left:
            part["state"] = "run"
            return None
        part["state"] = "skipped"
        kept_names = ", ".join(f"{p['model']}:{p['name']}" for p in kept) or "nothing"
        return (f"budget: ~{need:.0f} s needed, {left:.0f} s left of --budget-s {self.seconds:.0f} after keeping "
                f"~{reserve:.0f} s for {kept_names}")

    def skip(self, model: str, name: str) -> None:
        self._part(model, name)["state"] = "skipped"

    def done(self, name: str, seconds: float) -> None:
        self.measured[name] = seconds


# ----------------------------------------------------------------------------------------------------------
# models


def _random_weights(cls, cfg):
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        torch.set_default_dtype(torch.bfloat16 if CUDA else torch.float32)
        try:
            model = cls(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
    return model


def build_qwen2_audio():
    from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    from audiothink.toy import TOY_MODEL_DIR

    toy = AutoProcessor.from_pretrained(TOY_MODEL_DIR)
    tok = toy.tokenizer
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=toy.chat_template)
    cfg = Qwen2AudioConfig(**QWEN2_AUDIO_7B, audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    cfg.text_config.eos_token_id = tok.eos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    return _random_weights(Qwen2AudioForConditionalGeneration, cfg), processor, cfg


def build_omni_thinker():
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
    from transformers import WhisperFeatureExtractor

    from audiothink.models import OmniAudioProcessor
    from audiothink.toy.omni import build_omni_processor, omni_token_fields

    toy = build_omni_processor()
    tok = toy.tokenizer
    # Omni's feature extractor: 128 mel bins, 10 ms hop; its encoder runs on the valid frames only
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
                                 return_attention_mask=True)
    processor = OmniAudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=toy.chat_template)
    cfg = Qwen2_5OmniThinkerConfig(**QWEN2_5_OMNI_7B_THINKER, **omni_token_fields(tok))
    cfg.text_config.eos_token_id = tok.eos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    return _random_weights(Qwen2_5OmniThinkerForConditionalGeneration, cfg), processor, cfg


def build_qwen3_omni_thinker():
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration
    from transformers import WhisperFeatureExtractor

    from audiothink.models import Qwen3OmniAudioProcessor
    from audiothink.toy.qwen3_omni import build_qwen3_omni_processor, qwen3_omni_token_fields

    toy = build_qwen3_omni_processor()
    tok = toy.tokenizer
    # Qwen3-Omni's feature extractor: 128 mel bins, 10 ms hop; its encoder runs on the valid frames only
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
                                 return_attention_mask=True)
    processor = Qwen3OmniAudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=toy.chat_template)
    cfg = Qwen3OmniMoeThinkerConfig(**QWEN3_OMNI_30B_A3B_THINKER, **qwen3_omni_token_fields(tok))
    cfg.text_config.eos_token_id = tok.eos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    return _random_weights(Qwen3OmniMoeThinkerForConditionalGeneration, cfg), processor, cfg


BUILDERS = {"qwen2_audio_7b": build_qwen2_audio, "qwen2_5_omni_7b": build_omni_thinker,
            "qwen3_omni_30b_a3b": build_qwen3_omni_thinker}


def active_lm_parameters(model) -> int:
    """Language-model parameters (LM head included) a token goes through: all of a dense model's; for a mixture of
    experts the non-expert ones plus top-k / experts of the expert weights (what MFU counts: ~3.3 B of Qwen3-Omni's
    ~30.5 B)."""
    text = model.config.get_text_config()
    experts, top_k = getattr(text, "num_experts", None), getattr(text, "num_experts_per_tok", None)
    total = 0.0
    for n, p in model.named_parameters():
        if "language_model" not in n and "lm_head" not in n:
            continue
        share = top_k / experts if experts and top_k and ".mlp.experts." in n else 1.0
        total += p.numel() * share
    return int(total)


PROMPT = "{question}\n{choices}\nThink inside <think></think> if needed, then answer inside <answer></answer>."


def build(args, model_name: str, work: Path):
    from peft import LoraConfig
    from trl import GRPOConfig

    from audiothink.audio import write_wav
    from audiothink.data import Sample, to_dataset
    from audiothink.trainer import AudioGRPOTrainer
    from audiothink.rewards import Accuracy, AdaptiveThink, Format

    model, processor, cfg = BUILDERS[model_name]()
    tok = processor.tokenizer
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id

    rng = np.random.default_rng(0)
    samples = []
    for i in range(args.prompts):
        path = work / f"clip{i}.wav"
        t = np.arange(int(args.audio_seconds * 16000)) / 16000
        write_wav(path, 0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size))
        samples.append(Sample(id=f"b{i}", audio=(str(path),), question="is the tone high or low?",
                              choices=("low", "high"), answer="low"))
    steps = args.plain_steps + args.fast_steps
    dataset = to_dataset(samples * steps, PROMPT)  # every step's prompts have the same length: one bucket

    lm_only = r"^model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    rows = args.prompts * args.G
    assert rows % args.micro == 0, "--micro must divide prompts * G"
    targs = GRPOConfig(
        # one generation of prompts x G rows, consumed by rows/micro accumulated micro-batches
        output_dir=str(work / "run"), num_generations=args.G, per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=rows // args.micro, max_steps=steps, learning_rate=1e-6, beta=args.beta,
        max_completion_length=args.new_tokens, temperature=1.0, bf16=CUDA,
        activation_checkpointing=args.checkpointing, report_to=[], logging_steps=1, save_strategy="no",
        optim="adamw_torch_fused" if CUDA else "adamw_torch", disable_dropout=True,
        generation_kwargs={"min_new_tokens": args.new_tokens}, seed=0,
    )
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format(), Accuracy()], args=targs,
        train_dataset=dataset, max_audio_seconds=30.0, share_encoder_passes=not args.no_share_encoder,
        # the regex resolved to module names: for a mixture of experts PEFT 0.21 would rewrite it to leaf names and
        # wrap the audio encoder's q/k/v too (audiothink.loading.build_peft_config does the same)
        peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, task_type="CAUSAL_LM",
                               target_modules=sorted(n for n, _ in model.named_modules() if re.fullmatch(lm_only, n))),
        completion_prompts=0,
    )
    return trainer, cfg


def decode_floor(cfg, rows: int, prompt_len: int, new_tokens: int, bandwidth: float, lm_bytes: float) -> float:
    """Seconds for `new_tokens` decode steps if each step only had to read the LM weights and the KV cache."""
    t = cfg.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads  # Qwen3: 128, not 2048 / 32
    kv_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * 2  # K and V, bf16
    total = 0.0
    for step in range(new_tokens):
        total += lm_bytes + rows * (prompt_len + step) * kv_per_token
    return total / bandwidth


# ----------------------------------------------------------------------------------------------------------
# rollouts outside the training loop (exactness, more buckets): the trainer's own tokenizing and generate


def tokenize_rows(trainer, rows: list[dict]):
    """(prompt ids per row, the flat per-clip audio features for generate), as the trainer's rollout makes them."""
    trainer._pending_waves = trainer._load_waves(rows)
    try:
        with trainer._audio({}):
            prompt_ids, _, fields = trainer._tokenize_prompts([r["prompt"] for r in rows])
    finally:
        trainer._pending_waves = None
    return prompt_ids, fields


def rollout_rows(trainer, rows: list[dict]) -> list[list[int]]:
    """Completion ids of `rows` from the trainer's HF rollout (`_generate_single_turn`), current settings."""
    prompt_ids, fields = tokenize_rows(trainer, rows)
    # the training loop generates with the model in train mode, and the compiled decode is guarded on that
    # flag: the same mode here, or these rollouts would compile a second graph
    trainer.model.train()
    completion_ids, _ = trainer._generate_single_turn(prompt_ids, None, fields, trainer.num_generations)
    return [list(map(int, c)) for c in completion_ids]


@contextmanager
def generation_settings(trainer, *, plain: bool, greedy: bool):
    """The trainer's rollout switched to plain generate (dynamic cache, no compile, no bucket padding) or left
    as it is (the fast path, once enabled), sampling or greedy; put back afterwards."""
    saved = trainer.generation_config, trainer.pad_to_multiple_of
    config = copy.deepcopy(trainer.generation_config)
    if plain:
        config.cache_implementation, config.disable_compile = None, True
        trainer.pad_to_multiple_of = None
    if greedy:
        # set, not None: generate fills None fields from the model's config, where TRL put do_sample=True
        config.do_sample = False
    trainer.generation_config = config
    try:
        yield
    finally:
        trainer.generation_config, trainer.pad_to_multiple_of = saved


def static_cache_len(model) -> int | None:
    """The static KV cache length transformers gives the next generate: it never shrinks (transformers 5.23,
    `_previous_max_cache_length`, to avoid recompiles), so after a longer bucket every rollout decodes with
    the longer cache."""
    return next((m.__dict__["_previous_max_cache_length"] for m in model.modules()
                 if "_previous_max_cache_length" in m.__dict__), None)


def set_static_cache_len(model, length: int) -> None:
    for m in model.modules():
        if "_previous_max_cache_length" in m.__dict__:
            m._previous_max_cache_length = length


def rollout_twice(trainer, batch) -> tuple[list[float], dict]:
    """Two timed rollouts of ``batch``: the seconds of each, and what torch.compile did during the first."""
    before = compile_counters()
    times, first_counters = [], {}
    for _ in range(2):
        sync()
        t0 = time.perf_counter()
        rollout_rows(trainer, batch)
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            first_counters = counter_delta(before, compile_counters())
    return times, first_counters


def bucket_of(length: int, bucket: int) -> int:
    return -(-length // bucket) * bucket


def rows_in_bucket(trainer, base_rows: list[dict], target: int, bucket: int) -> list[dict]:
    """`base_rows` with filler words added to every question until the longest prompt is in bucket `target`."""
    filler, rows = "", base_rows
    for _ in range(400):
        rows = [dict(r, prompt=r["prompt"].replace("?", "?" + filler, 1)) for r in base_rows]
        longest = max(len(ids) for ids in tokenize_rows(trainer, rows[:1])[0])
        if bucket_of(longest, bucket) == target:
            return rows
        if bucket_of(longest, bucket) > target:
            break
        filler += " please listen"
    raise RuntimeError(f"no filler puts the prompt into bucket {target}")


def greedy_margin(trainer, row: dict, prefix: list[int], token_a: int, token_b: int) -> dict:
    """The plain model's logits after prompt + `prefix`: logit(token_a) - logit(token_b), and the top-2 gap."""
    prompt_ids, fields = tokenize_rows(trainer, [row])
    ids = torch.tensor([prompt_ids[0] + prefix], device=trainer.accelerator.device)
    model = trainer.model
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **fields).logits[0, -1].float()
    top2 = torch.topk(logits, 2).values
    return {"plain_minus_fast_logit": float(logits[token_a] - logits[token_b]),
            "top2_gap": float(top2[0] - top2[1])}


def compare_greedy(plain: list[list[int]], fast: list[list[int]]) -> list[dict]:
    """Per prompt: same tokens or not; on a mismatch, where they part and both sequences of ids."""
    out = []
    for p, f in zip(plain, fast, strict=True):
        if p == f:
            out.append({"same": True, "tokens": len(p)})
            continue
        first = next((i for i, (a, b) in enumerate(zip(p, f)) if a != b), min(len(p), len(f)))
        out.append({"same": False, "first_mismatch": first, "plain_ids": p, "fast_ids": f})
    return out


# ----------------------------------------------------------------------------------------------------------
# Liger in place


def liger_swap(model, model_cls: str):
    """Put Liger's RMSNorm / SwiGLU MLP / RoPE into a built `model` in place of transformers' own modules (the
    same classes `audiothink.models.use_liger_kernels` makes transformers build, sharing the built weights,
    LoRA wrappers included). Returns (a function that puts the originals back, modules swapped); ImportError
    without liger-kernel.
    """
    from audiothink.models import _LIGER_TARGETS

    liger = importlib.import_module("liger_kernel.transformers")
    module_name, norm_name, mlp_name, rope_name = _LIGER_TARGETS[model_cls]
    module = importlib.import_module(module_name)
    norm_cls, mlp_cls = getattr(module, norm_name), getattr(module, mlp_name)
    text_config = model.config.get_text_config()
    swapped = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is norm_cls:
                with torch.device("meta"):  # no new weights: the built ones are moved over
                    new = liger.LigerRMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                new.weight = child.weight
            elif type(child) is mlp_cls:
                # Omni's Qwen2MLP keeps no config: the sizes are the built projections', the activation the LM's
                config = types.SimpleNamespace(hidden_size=child.gate_proj.in_features,
                                               intermediate_size=child.gate_proj.out_features,
                                               hidden_act=text_config.hidden_act)
                with torch.device("meta"):
                    new = liger.LigerSwiGLUMLP(config)
                new.gate_proj, new.up_proj, new.down_proj = child.gate_proj, child.up_proj, child.down_proj
            else:
                continue
            setattr(parent, child_name, new)
            swapped.append((parent, child_name, child))
    rope = getattr(module, rope_name)
    setattr(module, rope_name, liger.liger_rotary_pos_emb)

    def restore():
        for parent, child_name, child in swapped:
            setattr(parent, child_name, child)
        setattr(module, rope_name, rope)

    return restore, len(swapped)


def liger_available() -> str | None:
    """None when liger-kernel imports; else why not."""
    try:
        importlib.import_module("liger_kernel.transformers")
    except ImportError as e:
        return f"not installed (liger-kernel: {e})"
    return None


# ----------------------------------------------------------------------------------------------------------
# AVQA: how many prompt buckets a run hits


def audio_tokens(seconds: float, sampling_rate: int = 16000, hop: int = 160) -> int:
    """`<|AUDIO|>` tokens for one clip, Qwen2-Audio's and Qwen2.5-Omni's processors alike: mel frames
    (one per `hop` samples, the valid ones), then the encoder's stride-2 convolution and its 2x pooling."""
    frames = -(-int(round(seconds * sampling_rate)) // hop)
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def uniform_pmf(lo: int, hi: int) -> np.ndarray:
    """P(k tokens) for k = 0..hi, uniform on lo..hi."""
    pmf = np.zeros(hi + 1)
    pmf[lo:hi + 1] = 1.0 / (hi - lo + 1)
    return pmf


def expected_buckets(length_pmf: np.ndarray, bucket: int, prompts_per_rollout: int, rollouts: int) -> dict:
    """Distinct `bucket`-token prompt buckets hit by `rollouts` rollouts of `prompts_per_rollout` prompts.

    `length_pmf[k]`: probability that the varying part of a prompt is k tokens. The fixed part (chat template,
    instruction, audio tokens) shifts every length by one constant; where that lands relative to a bucket
    boundary is unknown here, so every offset 0..bucket-1 is taken as equally likely. A rollout's bucket is the
    one of its longest prompt (prompts are padded to the longest, then to the bucket multiple). Returns the
    expected count (averaged over offsets), the fewest and most buckets possible at any offset (however
    rare), and the share of offsets at which more than one is possible.
    """
    lengths = np.arange(len(length_pmf))
    expected, possible = [], []
    for offset in range(bucket):
        index = (offset + lengths) // bucket  # bucket number of each length at this offset
        per_prompt = np.bincount(index, weights=length_pmf)
        cdf = np.cumsum(per_prompt) ** prompts_per_rollout  # P(longest prompt of a rollout in bucket <= b)
        per_rollout = np.diff(cdf, prepend=0.0)
        expected.append(float(np.sum(1 - (1 - per_rollout) ** rollouts)))
        possible.append(int(np.sum(per_prompt > 0)))  # buckets some rollout can land in, however rarely
    return {"expected": float(np.mean(expected)), "min": min(possible), "max": max(possible),
            "p_more_than_one": float(np.mean([p > 1 for p in possible]))}


# Stated assumptions (AVQA cannot be downloaded here, so its length distribution is not measured): questions
# of 5-16 words ("What happened in the audio?" is 5), four choices of 1-5 words each ("motorboat", "Sailboat set
# sail"), ~1.3 Qwen2 BPE tokens per English word, plus the question mark; the clips are VGGSound's 10 s
# segments. The wide case: questions of 4-25 words, choices of 1-8 words, 1.5 tokens per word.
AVQA_ASSUMPTIONS = {
    "typical": {"question_words": (5, 16), "choice_words": (1, 5), "tokens_per_word": 1.3},
    "wide": {"question_words": (4, 25), "choice_words": (1, 8), "tokens_per_word": 1.5},
}


def avqa_length_pmf(question_words: tuple[int, int], choice_words: tuple[int, int], tokens_per_word: float,
                    choices: int = 4) -> np.ndarray:
    """P(varying tokens of an AVQA prompt): question (words x tokens/word + '?') + `choices` choices, each uniform."""
    q = uniform_pmf(round(question_words[0] * tokens_per_word) + 1, round(question_words[1] * tokens_per_word) + 1)
    c = uniform_pmf(max(1, round(choice_words[0] * tokens_per_word)), round(choice_words[1] * tokens_per_word))
    pmf = q
    for _ in range(choices):
        pmf = np.convolve(pmf, c)
    return pmf


def avqa_bucket_estimate(steps: int = 1000, bucket: int = 64, prompts_per_rollout: int = 2,
                         clip_seconds: tuple[float, float] = (10.0, 10.0)) -> dict:
    """An estimate of the 64-token prompt buckets a `steps`-step AVQA run hits on one GPU (one rollout a step).

    prompts_per_rollout: prompts in one GPU's rollout; the recipe (configs/trainer/recipe.yaml: 8 rows per
    micro-batch x 2 accumulated / G = 8) gives 2; this benchmark's batch is 8. Clips shorter than 10 s add
    their audio tokens to the spread (clip_seconds). Every audio model's prompt holds the same question and
    choices, so the estimate holds for both (their fixed parts differ, and the offset is averaged over).
    """
    audio_lo, audio_hi = audio_tokens(clip_seconds[0]), audio_tokens(clip_seconds[1])
    out = {"steps": steps, "bucket": bucket, "prompts_per_rollout": prompts_per_rollout,
           "audio_tokens": [audio_lo, audio_hi], "estimate": True}
    for name, assumption in AVQA_ASSUMPTIONS.items():
        pmf = np.convolve(avqa_length_pmf(**assumption), uniform_pmf(0, audio_hi - audio_lo))
        support = np.nonzero(pmf)[0]
        out[name] = {"assumption": {k: list(v) if isinstance(v, tuple) else v for k, v in assumption.items()},
                     "varying_tokens": [int(support[0]), int(support[-1])],
                     **expected_buckets(pmf, bucket, prompts_per_rollout, steps)}
    return out


# ----------------------------------------------------------------------------------------------------------
# one model


class ModelRun:
    """Every part for one model; figures go into self.out (see the module docstring)."""

    def __init__(self, args, model_name: str, bw: float, mm: float, budget: Budget, save):
        self.args, self.name, self.bw, self.mm, self.budget, self.save = args, model_name, bw, mm, budget, save
        self.out: dict = {"model": model_name, "name": MODELS[model_name], "skipped": {}, "phase_s": {}}
        self.trainer = None

    # -- parts ------------------------------------------------------------------------------------------

    def part(self, name: str, fn, *, required: bool) -> bool:
        reason = self.budget.decide(self.name, name)
        if reason is not None:
            self.out["skipped"][name] = reason
            print(f"[{self.name}] {name}: skipped ({reason})", flush=True)
            self.save()
            return False
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # a broken optional part must not lose the figures of the others
            if required:
                raise
            traceback.print_exc()
            self.out["skipped"][name] = f"error: {type(e).__name__}: {e}"[:2000]
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
            return False
        finally:
            self.out["phase_s"][name] = time.perf_counter() - t0
            self.save()
        self.budget.done(name, self.out["phase_s"][name])  # a failed part's time says nothing of the next one's
        return True

    def run(self):
        """Required parts (build + training loop, with the micro-batch halved on out-of-memory), then the rest."""
        micro = self.args.micro
        while True:
            try:
                self.args = argparse.Namespace(**{**vars(self.args), "micro": micro})
                self.part("build", self.build, required=True)
                self.part("train", self.train_loop, required=True)
                break
            except torch.cuda.OutOfMemoryError:
                pass  # handled outside the except block, so the failed step's tensors can be freed
            self.release()
            torch._dynamo.reset()  # compiled graphs and CUDA graphs may hold the failed model's memory
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
            if micro == 1:
                raise RuntimeError(f"{self.name}: out of memory even with micro-batches of 1 row")
            print(f"{self.name}: micro-batches of {micro} rows did not fit in memory; again with {micro // 2}",
                  flush=True)
            self.out.setdefault("out_of_memory_at_micro", []).append(micro)
            micro //= 2
        self.part("liger", self.liger, required=False)
        self.part("exactness", self.exactness, required=self.name in EXACTNESS_REQUIRED)
        if self.part("bucket_b", lambda: self.extra_bucket(1), required=False):
            self.part("bucket_c", lambda: self.extra_bucket(2), required=False)
        else:
            self.budget.skip(self.name, "bucket_c")
            self.out["skipped"]["bucket_c"] = "needs bucket_b"
        self.part("warm_cache", self.warm_cache, required=False)
        self.finish()

    def build(self):
        work = Path(tempfile.mkdtemp(prefix="gpu_step_"))
        self.work = work
        gc.collect()
        # the model before must be gone (its ~17 GB would sit in this model's peak memory)
        self.out["trainers_alive_before_build"] = len(LIVE_TRAINERS)
        self.trainer, self.cfg = build(self.args, self.name, work)
        LIVE_TRAINERS.add(self.trainer)
        self.out["allocated_after_build_GiB"] = gib(torch.cuda.memory_allocated()) if CUDA else 0.0
        base = self.trainer.model.get_base_model()
        self.out["params_total"] = sum(p.numel() for p in base.parameters())
        self.out["params_lm"] = sum(p.numel() for n, p in base.named_parameters()
                                    if "language_model" in n or "lm_head" in n)
        # MFU's N: the parameters a token goes through (a mixture of experts: its routed share of the experts)
        self.out["params_lm_active"] = active_lm_parameters(base)
        self.out["micro"] = self.args.micro
        print(f"[{self.name}] built model + trainer", flush=True)

    def train_loop(self):
        args, trainer = self.args, self.trainer
        timers = Timers(step_of=lambda: trainer.state.global_step)
        self.timers = timers
        tokens: dict[int, dict] = {}

        def count_tokens(output):
            tokens[trainer.state.global_step] = {"prompt": int(output["prompt_mask"].sum()),
                                                 "completion": int(output["completion_mask"].sum())}

        timers.wrap(trainer, "_generate_single_turn", "rollout")
        timers.wrap(trainer, "_calculate_rewards", "rewards")
        timers.wrap(trainer, "_generate_and_score_completions", "generate_and_score", after=count_tokens)
        timers.wrap(trainer, "training_step", "training_step")
        logp = trainer._get_per_token_logps_and_entropies

        def timed_logp(*a, **k):
            name = "ref_logps" if not torch.is_grad_enabled() else "policy_logps"
            with timers.time(name):
                return logp(*a, **k)

        trainer._get_per_token_logps_and_entropies = timed_logp
        ends, peaks, graphs = {}, {}, {}
        self.fast_bucket_size = 64

        def on_step_end(step):
            ends[step], peaks[step], graphs[step] = time.perf_counter(), peak_bytes(), compile_counters()
            if step == args.plain_steps:
                # the batch of the last plain step, for the Liger comparison (same rows, same lengths)
                self.update_batches = list(trainer._buffered_inputs)
                if args.fast_steps:
                    self.cache_dir = trainer.enable_fast_generation(
                        bucket=self.fast_bucket_size, compile_cache_dir=args.compile_cache_dir or self.work / "inductor")

        trainer.add_callback(step_clock(on_step_end))
        start_counters = compile_counters()
        trainer.train()
        self.ends, self.peaks, self.graphs, self.tokens = ends, peaks, graphs, tokens
        passes = trainer.encoder_passes
        if passes is not None:  # over the training loop: rollout prefills, reference passes, updates
            self.out["encoder"] = {"clips_requested": passes.requested, "clips_encoded": passes.encoded}
        self.start_counters = start_counters

        cfg, out = self.cfg, self.out
        rows, p, f = args.prompts * args.G, args.plain_steps, args.fast_steps
        prompt_len = max(len(ids) for ids in tokenize_rows(trainer, [trainer.train_dataset[0]])[0])
        self.prompt_len = prompt_len
        gen_tokens = rows * args.new_tokens
        floor = decode_floor(cfg, rows, prompt_len, args.new_tokens, self.bw, 2 * out["params_lm"])
        out["shape"] = {"prompts": args.prompts, "G": args.G, "rows": rows, "audio_seconds": args.audio_seconds,
                        "prompt_tokens": prompt_len, "new_tokens": args.new_tokens, "lora_r": args.lora_r,
                        "beta": args.beta, "micro": args.micro, "checkpointing": args.checkpointing}
        plain = self.step_figures(p)
        out["step"] = {"plain": plain}
        out["rollout"] = {"floor_s": floor, "floor_tok_s": gen_tokens / floor,
                          "plain": {"s": plain["rollout"], "tok_s": gen_tokens / plain["rollout"],
                                    "pct_of_floor": 100 * floor / plain["rollout"]}}
        update_tokens = plain["prompt_tokens"] + plain["completion_tokens"]
        out["update"] = {"s": plain["update"], "tokens": update_tokens,
                         "mfu": 4 * out["params_lm_active"] * update_tokens / (plain["update"] * self.mm)}
        out["peak_GiB"] = gib(max(peaks.values()))
        print(f"\n{MODELS[self.name]} shape, {args.prompts} prompts x G={args.G}, {args.audio_seconds:g} s audio "
              f"({prompt_len} prompt tokens), {args.new_tokens} new tokens, LoRA r={args.lora_r}, beta={args.beta}, "
              f"micro-batches of {args.micro}")
        print(f"parameters: {out['params_total'] / 1e9:.2f} B total, {out['params_lm'] / 1e9:.2f} B language model + head")
        print(f"rollout (plain HF generate): {plain['rollout']:.2f} s = {gen_tokens / plain['rollout']:.0f} tok/s; "
              f"memory-bound floor {gen_tokens / floor:.0f} tok/s ({floor:.2f} s) -> {floor / plain['rollout']:.1%} of floor")
        print(f"update (policy fwd+bwd): {plain['update']:.2f} s for {update_tokens} tokens -> MFU {out['update']['mfu']:.1%}")
        self.print_step("plain", plain)
        if f:
            fast = self.step_figures(p + f)
            compile_step = self.step_figures(p + 1)
            out["step"]["fast"] = fast
            out["rollout"]["fast"] = {"s": fast["rollout"], "tok_s": gen_tokens / fast["rollout"],
                                      "pct_of_floor": 100 * floor / fast["rollout"],
                                      "x_plain": plain["rollout"] / fast["rollout"]}
            compiled = graphs[p + 1]["graphs"] > graphs[p]["graphs"]
            inductor_config = importlib.import_module("torch._inductor.config")
            dynamo_config = importlib.import_module("torch._dynamo.config")
            out["fast_path"] = {
                "mode": ("static KV cache + torch.compile'd decode (inductor, mode reduce-overhead)" if compiled else
                         "static KV cache, eager: nothing was compiled (transformers compiles generate only on "
                         "GPU-class devices; on CPU the fast path is an eager static cache)"),
                "compiled": compiled, "bucket_size": self.fast_bucket_size, "cache_dir": str(self.cache_dir),
                "fx_graph_cache": bool(inductor_config.fx_graph_cache),
                "recompile_limit": int(dynamo_config.recompile_limit),
                # graphs compiled after the first fast step: 0 = the compiled decode is reused across steps
                "graphs_after_first_fast_step": graphs[p + f]["graphs"] - graphs[p + 1]["graphs"],
                "buckets": [{"bucket": bucket_of(prompt_len, self.fast_bucket_size), "where": "training loop",
                             "cache_len": static_cache_len(trainer.model),
                             "first_s": compile_step["rollout"], "steady_s": fast["rollout"],
                             "compile_s": compile_step["rollout"] - fast["rollout"],
                             **counter_delta(graphs[p], graphs[p + 1])}],
            }
            print(f"rollout (fast path: {'compiled' if compiled else 'eager'} static cache, "
                  f"{self.fast_bucket_size}-token buckets): {fast['rollout']:.2f} s = {gen_tokens / fast['rollout']:.0f} tok/s"
                  f" = {plain['rollout'] / fast['rollout']:.2f}x plain, {floor / fast['rollout']:.1%} of floor; first fast "
                  f"step's rollout {compile_step['rollout']:.2f} s (compile {compile_step['rollout'] - fast['rollout']:.1f} s)")
            self.print_step("fast", fast)
        print(f"peak GPU memory {out['peak_GiB']:.1f} GiB", flush=True)

    def step_figures(self, step: int) -> dict:
        """The split of optimizer step `step` (1-based) and its throughput; needs the step before it clocked."""
        t, k = self.timers, step - 1
        assert step >= 2, "a step's time is measured from the end of the step before: run at least 2 steps"
        seconds = self.ends[step] - self.ends[step - 1]
        rollout, ref, rewards = t.get("rollout", k), t.get("ref_logps", k), t.get("rewards", k)
        update = t.get("training_step", k) - t.get("generate_and_score", k)
        toks = self.tokens[k]
        gpus = self.trainer.accelerator.num_processes
        return {"s": seconds, "rollout": rollout, "reference": ref, "rewards": rewards, "update": update,
                "other": seconds - rollout - ref - rewards - update,
                "prompt_tokens": toks["prompt"], "completion_tokens": toks["completion"],
                "tokens_per_s_per_gpu": (toks["prompt"] + toks["completion"]) / seconds / gpus,
                "completion_tokens_per_s_per_gpu": toks["completion"] / seconds / gpus,
                "peak_GiB": gib(self.peaks[step])}

    @staticmethod
    def print_step(kind: str, s: dict) -> None:
        print(f"step ({kind}) {s['s']:.2f} s = rollout {s['rollout']:.2f} + reference {s['reference']:.2f} + rewards "
              f"{s['rewards']:.3f} + update {s['update']:.2f} + other {s['other']:.2f}; "
              f"{s['tokens_per_s_per_gpu']:.0f} tok/s per GPU ({s['completion_tokens_per_s_per_gpu']:.0f} completion "
              f"tok/s), peak {s['peak_GiB']:.1f} GiB", flush=True)

    def measure_update(self, batches) -> dict:
        """Policy forward + backward over `batches` (one optimizer step's micro-batches), after one warm-up
        micro-batch; gradients dropped, weights unchanged."""
        trainer = self.trainer
        model = trainer.model
        model.train()

        def forward_backward(batch):
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(model, batch)
            trainer.accelerator.backward(loss / len(batches))

        forward_backward(batches[0])  # first use of new kernels (Liger's Triton JIT) is not timed
        model.zero_grad(set_to_none=True)
        reset_peak()
        sync()
        t0 = time.perf_counter()
        for batch in batches:
            forward_backward(batch)
        sync()
        seconds = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        tokens = sum(int(b["prompt_mask"].sum() + b["completion_mask"].sum()) for b in batches)
        return {"s": seconds, "tokens": tokens, "mfu": 4 * self.out["params_lm_active"] * tokens / (seconds * self.mm),
                "peak_GiB": gib(peak_bytes())}

    def liger(self):
        update = self.out["update"]
        update["liger_off"] = self.measure_update(self.update_batches)
        from audiothink.models import _LIGER_TARGETS

        missing = liger_available() if self.args.liger == "auto" else "off (--liger off)"
        if MODEL_CLASSES[self.name] not in _LIGER_TARGETS:  # a mixture of experts: no SwiGLU MLP to swap
            missing = f"no Liger mapping for {MODEL_CLASSES[self.name]}"
        if missing:
            update["liger_on"] = missing
        else:
            restore, n = liger_swap(self.trainer.model, MODEL_CLASSES[self.name])
            try:
                update["liger_on"] = self.measure_update(self.update_batches) | {"modules_swapped": n}
            finally:
                restore()
            update["liger_on"]["x_off"] = update["liger_off"]["s"] / update["liger_on"]["s"]
        on = update["liger_on"]
        print(f"update, same batch: Liger off {update['liger_off']['s']:.2f} s (MFU {update['liger_off']['mfu']:.1%}, "
              f"peak {update['liger_off']['peak_GiB']:.1f} GiB); Liger on "
              + (f"{on['s']:.2f} s (MFU {on['mfu']:.1%}, peak {on['peak_GiB']:.1f} GiB)" if isinstance(on, dict) else on),
              flush=True)

    def exactness(self):
        """Greedy tokens of 2 prompts, fast path vs plain generate (see the module docstring)."""
        trainer, rows = self.trainer, self.args.prompts * self.args.G
        if "fast_path" not in self.out:
            raise RuntimeError("the fast path did not run (--fast-steps 0)")
        first = dict(trainer.train_dataset[0])
        second = dict(trainer.train_dataset[1])
        # a shorter question: rows of different lengths in one batch (left padding inside the bucket too)
        shorter = dict(second, prompt=second["prompt"].replace("is the tone high or low?", "high or low?", 1))
        lengths = [len(ids) for ids in tokenize_rows(trainer, [first, shorter])[0]]
        bucket = self.fast_bucket_size
        if bucket_of(min(lengths), bucket) == bucket_of(max(lengths), bucket) == bucket_of(self.prompt_len, bucket):
            second = shorter  # else it would need a new bucket, i.e. a compile: keep the question
        pair = [first, second]
        batch = [pair[i * 2 // rows] for i in range(rows)]  # the compiled shape: rows/2 copies of each prompt
        with generation_settings(trainer, plain=False, greedy=True):
            fast_all = rollout_rows(trainer, batch)
        fast = [fast_all[0], fast_all[rows // 2]]
        with generation_settings(trainer, plain=True, greedy=True):
            plain = rollout_rows(trainer, pair)
        per_prompt = compare_greedy(plain, fast)
        for row, result in zip(pair, per_prompt):
            if not result["same"] and result["first_mismatch"] < min(len(result["plain_ids"]), len(result["fast_ids"])):
                k = result["first_mismatch"]
                result |= greedy_margin(trainer, row, result["plain_ids"][:k], result["plain_ids"][k],
                                        result["fast_ids"][k])
        copies_agree = all(c == fast_all[0] for c in fast_all[: rows // 2]) and all(
            c == fast_all[rows // 2] for c in fast_all[rows // 2:])
        self.out["exactness"] = {
            "same_tokens": all(r["same"] for r in per_prompt), "prompts": per_prompt,
            "prompt_tokens": [len(ids) for ids in tokenize_rows(trainer, pair)[0]],
            "fast": f"greedy, {self.out['fast_path']['mode']}, batch of {rows} ({rows // 2} copies of each prompt)",
            "plain": "greedy, plain generate (dynamic cache), batch of the 2 prompts",
            "fast_copies_agree": copies_agree,
        }
        print(f"exactness (greedy, 2 prompts, fast vs plain): "
              f"{'same tokens' if self.out['exactness']['same_tokens'] else 'DIFFERENT tokens'} "
              f"({[r.get('first_mismatch', 'same') for r in per_prompt]}); fast copies agree: {copies_agree}", flush=True)

    def extra_bucket(self, k: int):
        """Rollouts whose prompts sit k buckets above the training loop's: first call, then a steady call."""
        trainer, bucket = self.trainer, self.fast_bucket_size
        if "fast_path" not in self.out:
            raise RuntimeError("the fast path did not run (--fast-steps 0)")
        target = bucket_of(self.prompt_len, bucket) + k * bucket
        base = [dict(trainer.train_dataset[i]) for i in range(self.args.prompts)]
        rows = rows_in_bucket(trainer, base, target, bucket)
        batch = [r for r in rows for _ in range(self.args.G)]
        times, first_counters = rollout_twice(trainer, batch)
        self.out["fast_path"]["buckets"].append({
            "bucket": target, "where": "extra rollout", "cache_len": static_cache_len(trainer.model),
            "first_s": times[0], "steady_s": times[1],
            "compile_s": times[0] - times[1], **first_counters})
        print(f"fast rollout, bucket {target}: first call {times[0]:.2f} s, steady {times[1]:.2f} s, "
              f"graphs compiled {first_counters['graphs']}", flush=True)

    def warm_cache(self):
        """dynamo's in-memory state dropped (torch._dynamo.reset), the first bucket again: a re-trace that finds
        inductor's on-disk caches, as a second process would (minus the imports and the model build)."""
        trainer = self.trainer
        if "fast_path" not in self.out:
            raise RuntimeError("the fast path did not run (--fast-steps 0)")
        batch = [dict(trainer.train_dataset[i]) for i in range(self.args.prompts) for _ in range(self.args.G)]
        # the training loop's cache length again (the extra buckets grew it), so the shapes are the loop's
        set_static_cache_len(trainer.model, self.out["fast_path"]["buckets"][0]["cache_len"])
        torch._dynamo.reset()
        times, first_counters = rollout_twice(trainer, batch)
        self.out["fast_path"]["warm_cache"] = {
            "bucket": bucket_of(self.prompt_len, self.fast_bucket_size), "cache_len": static_cache_len(trainer.model),
            "first_s": times[0], "steady_s": times[1],
            "compile_s": times[0] - times[1], **first_counters}
        print(f"fast rollout after torch._dynamo.reset (warm on-disk cache): first call {times[0]:.2f} s, steady "
              f"{times[1]:.2f} s, FX graph cache hits {first_counters['fx_cache_hits']}", flush=True)

    def finish(self):
        if "encoder" in self.out:
            e = self.out["encoder"]
            print(f"audio encoder (training loop): {e['clips_encoded']} clip passes for {e['clips_requested']} clips "
                  "requested", flush=True)
        self.release()

    def release(self):
        """Drop every reference to the model (the timers' step counter reads the trainer), and the work folder
        (clips, the run folder, the default per-model compile cache)."""
        self.trainer = self.timers = self.update_batches = self.cfg = None
        if getattr(self, "work", None) is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


# ----------------------------------------------------------------------------------------------------------


def default_out_path(device_name: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device"
    return ROOT / "bench" / "results" / f"gpu_step_{slug}_{datetime.date.today().isoformat()}.json"


def versions() -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "trl", "peft", "accelerate", "liger_kernel", "triton"):
        try:
            module = importlib.import_module(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*MODELS, "all"], default="all")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--audio-seconds", type=float, default=10.0)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--plain-steps", type=int, default=2, help="steps with plain generate; the last is reported")
    ap.add_argument("--fast-steps", type=int, default=2,
                    help="steps with the fast path after those (the first compiles; the last is reported); 0: none")
    ap.add_argument("--micro", type=int, default=16, help="rows per update micro-batch (accumulated)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the update")
    ap.add_argument("--liger", choices=["auto", "off"], default="auto",
                    help="auto: the update also with Liger's kernels when liger-kernel imports")
    ap.add_argument("--no-share-encoder", action="store_true",
                    help="encode every copy of a clip (G per prompt), as before audiothink.models")
    ap.add_argument("--compile-cache-dir", type=Path, default=None,
                    help="torch.compile's cache folder for the fast path (default: a fresh one per model, so "
                         "compile times are cold ones)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="whole-run budget: optional parts that would not fit are skipped (and recorded)")
    ap.add_argument("--out", type=Path, default=None,
                    help="the JSON file (default bench/results/gpu_step_<device>_<date>.json)")
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # the tests' toy-size runs
    args = ap.parse_args(argv)
    if args.plain_steps < 2:
        ap.error("--plain-steps: at least 2 (a step is timed from the end of the step before)")
    if args.fast_steps == 1:
        ap.error("--fast-steps: 0, or at least 2 (the first one compiles)")
    return args


def main(argv=None, *, floors: tuple[float, float] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    if not CUDA and not args.allow_cpu:
        raise SystemExit("this benchmark needs a CUDA GPU")
    device = torch.cuda.get_device_name() if CUDA else "cpu"
    if floors is None:
        floors = (measure_bandwidth(), measure_matmul()) if CUDA else (
            measure_bandwidth(0.05, "cpu"), measure_matmul(256, "cpu"))
    bw, mm = floors
    print(f"device: {device}  copy {bw / 1e9:.0f} GB/s  bf16 matmul {mm / 1e12:.1f} TFLOP/s", flush=True)
    models = list(ALL) if args.model == "all" else [args.model]

    estimates = dict(ESTIMATE_S)
    estimates["train"] = (args.plain_steps * ESTIMATE_S["plain_step"]
                          + (ESTIMATE_S["fast_compile"] + args.fast_steps * ESTIMATE_S["fast_step"]
                             if args.fast_steps else 0.0))
    budget = Budget(args.budget_s, estimates, start=start)
    for m in models:
        budget.add(m, "build", True)
        budget.add(m, "train", True)
        for name in ("liger", "exactness", "bucket_b", "bucket_c", "warm_cache"):
            budget.add(m, name, name == "exactness" and m in EXACTNESS_REQUIRED)
    if budget.required_total() > args.budget_s:
        print(f"warning: the required parts alone are estimated at ~{budget.required_total():.0f} s, over "
              f"--budget-s {args.budget_s:.0f}", flush=True)

    out_path = args.out or default_out_path(device)
    avqa = {"recipe": avqa_bucket_estimate(prompts_per_rollout=2),
            "this_benchmark": avqa_bucket_estimate(prompts_per_rollout=8)}
    report = {
        "device": device, "versions": versions(), "copy_bandwidth_GBps": bw / 1e9, "bf16_matmul_TFLOPs": mm / 1e12,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "budget_s": args.budget_s, "estimate_s": estimates, "avqa_buckets": avqa, "models": {}, "complete": False,
    }

    def save():
        report["elapsed_s"] = time.perf_counter() - start
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str))

    for name, est in avqa.items():
        t, w = est["typical"], est["wide"]
        print(f"AVQA prompt buckets over {est['steps']} steps, {est['prompts_per_rollout']} prompts per rollout "
              f"({name}; an estimate): expected {t['expected']:.2f} ({t['min']}-{t['max']}), "
              f"wide assumption {w['expected']:.2f} ({w['min']}-{w['max']})", flush=True)
    errors = []
    for m in models:
        run = ModelRun(args, m, bw, mm, budget, save)
        report["models"][m] = run.out
        try:
            run.run()
        except Exception as e:  # the other model still runs; the error is in the JSON and the exit status
            traceback.print_exc()
            run.out["error"] = f"{type(e).__name__}: {e}"[:4000]
            errors.append(m)
        finally:
            run.release()
            # compiled code and CUDA graphs are global state and may hold the model's memory: drop them too (the
            # next model compiles from scratch, as a cold run would)
            torch._dynamo.reset()
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
        save()
    report["complete"] = not errors
    save()
    print(f"\nwrote {out_path} ({report['elapsed_s']:.0f} s of --budget-s {args.budget_s:.0f}; skipped: "
          + ("; ".join(f"{m}:{k}" for m, r in report["models"].items() for k in r["skipped"]) or "nothing") + ")",
          flush=True)
    if errors:
        raise SystemExit(f"errors in: {', '.join(errors)} (see 'error' in {out_path})")
    return report


if __name__ == "__main__":
    main()
