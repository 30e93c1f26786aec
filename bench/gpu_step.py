"""One real GRPO step at 7B scale on one GPU: rollout speed against the memory floor, update MFU, memory.

    python bench/gpu_step.py                       # both models, one after the other (~8 min on an H100)
    python bench/gpu_step.py --model qwen2_audio_7b        # Qwen2-Audio-7B-Instruct shape only
    python bench/gpu_step.py --model qwen2_5_omni_7b       # Qwen2.5-Omni-7B thinker shape only
    python bench/gpu_step.py --prompts 2 --new-tokens 32 --steps 2 --fast-calls 2   # a quick smoke run

No checkpoint can be downloaded where this runs, so each model is the real architecture built from its
published config with random bf16 weights; the tokenizer is the embedded toy's (with Omni's extra special
tokens for the thinker; its ids fit both vocabularies, and the LM head still projects onto all 156,032 /
152,064 rows). The Omni thinker's vision tower is built (it holds memory) but never runs. Speed and memory do
not depend on the weights' values. To make every completion exactly --new-tokens long (random weights
rarely sample EOS, but a run must not depend on it), generation uses min_new_tokens.

What runs is the project's own AudioGRPOTrainer step (TRL's loop, our audio path): rollout (HF generate
with the audio features), reward scoring, the reference log-prob pass (β > 0 with LoRA: adapter off), the
policy forward/backward and the optimizer step. Timers wrap the trainer's own methods.

Printed, all measured in this run:
- device floors: copy bandwidth (bytes read + written per second) and bf16 matmul rate (8192³);
- rollout tokens/s, plain HF generate, and with a static KV cache + torch.compile'd decode (the fast-path
  candidate), each against the memory-bound floor: per decode step, weights + KV cache bytes read over
  the measured bandwidth;
- update: time of the policy forward + backward + optimizer step, and MFU = 4·N·T / (time · matmul rate)
  (N = language-model parameters, T = tokens in the update; 4 = forward 2 + backward to activations 2,
  since LoRA leaves the base weights without gradient);
- peak memory and the split of one step (rollout / reference log-probs / rewards / update).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

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
MODELS = {"qwen2_audio_7b": "Qwen2-Audio-7B-Instruct", "qwen2_5_omni_7b": "Qwen2.5-Omni-7B thinker"}


CUDA = torch.cuda.is_available()  # the benchmark is for a GPU; tests run its code paths on CPU at toy size


def sync():
    if CUDA:
        torch.cuda.synchronize()


def measure_bandwidth(gib: float = 4.0) -> float:
    """Device-to-device copy: bytes read + written per second."""
    n = int(gib * 2**30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda")
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


def measure_matmul(n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
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


class Timers:
    def __init__(self):
        self.t: dict[str, list[float]] = {}

    @contextmanager
    def time(self, name):
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.t.setdefault(name, []).append(time.perf_counter() - t0)

    def wrap(self, obj, method, name):
        original = getattr(obj, method)

        def wrapped(*a, **k):
            with self.time(name):
                return original(*a, **k)

        setattr(obj, method, wrapped)


def _random_weights(cls, cfg):
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        torch.set_default_dtype(torch.bfloat16 if CUDA else torch.float32)
        model = cls(cfg)
        torch.set_default_dtype(torch.float32)
    return model


def build_qwen2_audio():
    from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    from audiothink.setup import TOY_MODEL_DIR

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


def build(args, work: Path):
    from peft import LoraConfig
    from trl import GRPOConfig

    from audiothink.audio import write_wav
    from audiothink.data import Sample, to_dataset
    from audiothink.trainer import AudioGRPOTrainer
    from rewards import Accuracy, AdaptiveThink, Format

    if args.liger:
        from audiothink.models import use_liger_kernels

        use_liger_kernels("Qwen2AudioForConditionalGeneration" if args.model == "qwen2_audio_7b"
                          else "Qwen2_5OmniThinkerForConditionalGeneration")
    model, processor, cfg = (build_qwen2_audio if args.model == "qwen2_audio_7b" else build_omni_thinker)()
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
    prompt = "{question}\n{choices}\nThink inside <think></think> if needed, then answer inside <answer></answer>."
    dataset = to_dataset(samples * 4, prompt)

    lm_only = r"^model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    gen_kwargs = {"min_new_tokens": args.new_tokens}
    rows = args.prompts * args.G
    assert rows % args.micro == 0, "--micro must divide prompts * G"
    targs = GRPOConfig(
        # one generation of prompts x G rows, consumed by rows/micro accumulated micro-batches
        output_dir=str(work / "run"), num_generations=args.G, per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=rows // args.micro, max_steps=args.steps, learning_rate=1e-6, beta=args.beta,
        max_completion_length=args.new_tokens, temperature=1.0, bf16=CUDA,
        activation_checkpointing=args.checkpointing, report_to=[], logging_steps=1, save_strategy="no",
        optim="adamw_torch_fused", disable_dropout=True, generation_kwargs=gen_kwargs, seed=0,
    )
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format(), Accuracy()], args=targs,
        train_dataset=dataset, max_audio_seconds=30.0, share_encoder_passes=not args.no_share_encoder,
        peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=lm_only, task_type="CAUSAL_LM"),
    )
    return trainer, cfg


def decode_floor(cfg, rows: int, prompt_len: int, new_tokens: int, bandwidth: float, lm_bytes: float) -> float:
    """Seconds for `new_tokens` decode steps if each step only had to read the LM weights and the KV cache."""
    t = cfg.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    kv_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * 2  # K and V, bf16
    total = 0.0
    for step in range(new_tokens):
        total += lm_bytes + rows * (prompt_len + step) * kv_per_token
    return total / bandwidth


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*MODELS, "all"], default="all")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--audio-seconds", type=float, default=10.0)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--steps", type=int, default=2, help="training steps; the last one is reported")
    ap.add_argument("--micro", type=int, default=16, help="rows per update micro-batch (accumulated)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the update")
    ap.add_argument("--liger", action="store_true", help="Liger's fused RMSNorm/SwiGLU/RoPE (needs liger-kernel)")
    ap.add_argument("--no-share-encoder", action="store_true",
                    help="encode every copy of a clip (G per prompt), as before audiothink.models")
    ap.add_argument("--skip-fast", action="store_true", help="do not time the static-cache + compile rollout")
    ap.add_argument("--fast-calls", type=int, default=3, help="fast-path rollouts; the first one compiles")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here ({model} is replaced)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    assert args.skip_fast or args.fast_calls >= 2, "--fast-calls: the first call compiles, at least 2 are needed"

    bw, mm = measure_bandwidth(), measure_matmul()
    print(f"device: {torch.cuda.get_device_name()}  copy {bw / 1e9:.0f} GB/s  bf16 matmul {mm / 1e12:.0f} TFLOP/s",
          flush=True)
    for model in (list(MODELS) if args.model == "all" else [args.model]):
        out, micro = None, args.micro
        while out is None:
            try:
                out = run_one(argparse.Namespace(**{**vars(args), "model": model, "micro": micro}), bw, mm)
            except torch.cuda.OutOfMemoryError:
                pass  # handled below, outside the except block, so the failed step's tensors can be freed
            if out is None:
                gc.collect()
                torch.cuda.empty_cache()
                if micro == 1:
                    raise SystemExit(f"{model}: out of memory even with micro-batches of 1 row")
                print(f"{model}: micro-batches of {micro} rows did not fit in memory; again with {micro // 2}",
                      flush=True)
                micro //= 2
        if args.json:
            Path(str(args.json).replace("{model}", model)).write_text(json.dumps(out, indent=2))
        print(json.dumps(out), flush=True)
        gc.collect()  # the first model's 17 GB go before the second is built
        torch.cuda.empty_cache()


def run_one(args, bw: float, mm: float) -> dict:
    out: dict = {"model": args.model, "device": torch.cuda.get_device_name() if CUDA else "cpu",
                 "args": vars(args) | {"json": None}}
    out["copy_bandwidth_GBps"], out["bf16_matmul_TFLOPs"] = bw / 1e9, mm / 1e12
    work = Path(tempfile.mkdtemp(prefix="gpu_step_"))
    t0 = time.perf_counter()
    trainer, cfg = build(args, work)
    print(f"built model + trainer in {time.perf_counter() - t0:.0f}s", flush=True)
    base = trainer.model.get_base_model()
    lm_params = sum(p.numel() for n, p in base.named_parameters() if "language_model" in n or "lm_head" in n)
    all_params = sum(p.numel() for p in base.parameters())
    out["params_total"], out["params_lm"] = all_params, lm_params

    timers = Timers()
    timers.wrap(trainer, "_generate_single_turn", "rollout")
    timers.wrap(trainer, "_calculate_rewards", "rewards")
    timers.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
    timers.wrap(trainer, "training_step", "training_step")
    logp = trainer._get_per_token_logps_and_entropies

    def timed_logp(*a, **k):
        name = "ref_logps" if not torch.is_grad_enabled() else "policy_logps"
        with timers.time(name):
            return logp(*a, **k)

    trainer._get_per_token_logps_and_entropies = timed_logp
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if CUDA else 0

    rows = args.prompts * args.G
    accum = rows // args.micro
    last = {k: v[-1] for k, v in timers.t.items()}
    last["training_step"] = sum(timers.t["training_step"][-accum:])  # the last optimizer step's micro-batches
    rollout = last["rollout"]
    gen_tokens = rows * args.new_tokens
    # prompt length: 10 s of audio = 250 audio tokens plus the text around it
    enc = trainer.processor(text=trainer.processor.apply_chat_template(
        [[{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": trainer.train_dataset[0]["prompt"]}]}]],
        tokenize=False, add_generation_prompt=True), audio=[np.zeros(int(args.audio_seconds * 16000), np.float32)],
        sampling_rate=16000, return_tensors="pt")
    prompt_len = enc["input_ids"].shape[1]
    lm_bytes = 2 * lm_params
    floor = decode_floor(cfg, rows, prompt_len, args.new_tokens, bw, lm_bytes)
    update = last["training_step"] - last["generate_and_score"]
    tokens_update = rows * (prompt_len + args.new_tokens)
    mfu = 4 * lm_params * tokens_update / (update * mm)
    step = last["training_step"]
    out.update({
        "prompt_tokens": prompt_len, "rows": rows, "generated_tokens": gen_tokens,
        "rollout_s": rollout, "rollout_tok_s_plain": gen_tokens / rollout,
        "floor_s": floor, "floor_tok_s": gen_tokens / floor,
        "ref_logps_s": last.get("ref_logps", 0.0), "rewards_s": last["rewards"], "update_s": update,
        "update_tokens": tokens_update, "mfu": mfu, "step_s": step, "peak_mem_GiB": peak / 2**30,
    })
    print(f"\n{MODELS[args.model]} shape, {args.prompts} prompts x G={args.G}, {args.audio_seconds:.0f} s audio "
          f"({prompt_len} prompt tokens), {args.new_tokens} new tokens, LoRA r={args.lora_r}, beta={args.beta}")
    print(f"parameters: {all_params / 1e9:.2f} B total, {lm_params / 1e9:.2f} B language model + head")
    print(f"rollout (plain HF generate): {rollout:.2f} s = {gen_tokens / rollout:.0f} tok/s;"
          f" memory-bound floor {gen_tokens / floor:.0f} tok/s ({floor:.2f} s) -> {floor / rollout:.1%} of floor")
    print(f"update (policy fwd+bwd+optim): {update:.2f} s for {tokens_update} tokens -> MFU {mfu:.1%}")
    print(f"step {step:.2f} s = rollout {rollout:.2f} + ref log-probs {last.get('ref_logps', 0):.2f}"
          f" + rewards {last['rewards']:.3f} + update {update:.2f} + other {step - rollout - last.get('ref_logps', 0) - last['rewards'] - update:.2f}")
    print(f"peak GPU memory {peak / 2**30:.1f} GiB", flush=True)

    if not args.skip_fast:
        # The fast path, through the same trainer rollout code: static cache + compiled decode, prompts
        # padded to 64-token buckets. Batches of different prompt lengths within one bucket reuse the graph.
        trainer.enable_fast_generation(bucket=64)
        times = []
        for k in range(args.fast_calls):
            extra = " please listen" * (k % 2)  # a few more prompt tokens: same 64-token bucket, no recompile
            batch = []
            for i in range(args.prompts):
                row = dict(trainer.train_dataset[i % args.prompts])
                row["prompt"] = row["prompt"].replace("?", "?" + extra, 1)
                batch.extend([row] * args.G)
            with timers.time("fast_rollout"):
                trainer._generate_and_score_completions(batch)
            times.append(timers.t["rollout"][-1])
            print(f"  fast rollout call {k} (+{len(trainer.processing_class(extra)['input_ids'])} prompt tokens):"
                  f" {times[-1]:.2f} s", flush=True)
        fast = min(times[1:])
        out["rollout_tok_s_fast"] = gen_tokens / fast
        out["fast_over_plain"] = rollout / fast
        out["fast_calls_s"] = times
        print(f"rollout (fast path: static cache + compile, 64-token buckets): {fast:.2f} s = "
              f"{gen_tokens / fast:.0f} tok/s = {rollout / fast:.2f}x plain, {floor / fast:.1%} of floor")
    passes = trainer.encoder_passes
    if passes is not None:
        out["encoder_clips_requested"], out["encoder_clips_encoded"] = passes.requested, passes.encoded
        print(f"audio encoder: {passes.encoded} clip passes for {passes.requested} clips requested", flush=True)
    del trainer
    return out


if __name__ == "__main__":
    main()
