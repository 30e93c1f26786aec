"""Rollout speed, side by side: HF generate vs the fast HF path vs vLLM, same prompts, same weights, one run.

    nice -n 10 python bench/rollout_engines.py                 # toy (30 s copy) + the larger random model
    nice -n 10 python bench/rollout_engines.py --models toy    # the toy only
    python bench/rollout_engines.py --hidden 768 --layers 6    # the larger model's decoder size

What one rollout batch is: the default toy run's (16 prompts x G 8 = 128 rows, temperature 1.2, at most 48 new
tokens, the audio markers banned), on the first 16 held-out toy items (1- and 4-clip items mixed), the
training prompt of configs/train.yaml. Every engine gets the same rows and the same checkpoint folder:

- ``hf``: ``model.generate`` as the trainer's HF rollout calls it (sampled, ``suppress_tokens``), after the
  processor's feature extraction, which is timed apart (``processor_s``: the trainer runs it with either engine,
  for the log-prob passes);
- ``hf_fast``: the same with the fast path's settings (``audiothink.fast_rollout.enable_fast_generation``: static
  KV cache, torch.compile'd decode step, prompts padded to 64-token buckets); the first call compiles (timed
  apart as ``compile_s``), the second is the timed one. On CPU transformers 5.23 does not compile (its
  auto-compile in ``generate`` is for cuda/xpu/neuron/tpu devices only): there it is the static cache + buckets;
- ``vllm``: audiothink's engine (``AudioVLLMGeneration``, TRL's colocate engine in-process, TRL's sampling
  parameters, the 128 rows with n=1 each as TRL sends them), the weights synced once through
  ``sync_weights`` (``reload_weights`` + cache resets). Start-up (``LLM(...)``) and the first warm-up generate
  are reported apart; before the timed call the encoder and prefix caches are reset, as every training step's
  sync does (``vllm``: the first call on this batch; ``vllm_warm``: the same batch again, vLLM's multimodal
  processor cache warm: what a toy run's repeated items see).

Models: ``toy`` = the toy's 30 s-window copy (audiothink/toy/window30.py: stock vLLM refuses the 1 s toy, so
every engine runs the copy and the comparison is one model); ``big`` = the toy's audio tower and tokenizer with a
larger random decoder (``--hidden``/``--layers``, saved to ``--big-dir``), so the ratio is not all audio encoder.
tokens/s = new tokens (up to and including the end token) / wall seconds of the call; tok/CPU s the same per CPU
second of the engine's process (less sensitive to a shared machine's load; the in-process vLLM engine's threads
included, inductor's compile workers not). Writes
bench/results/rollout_engines.json (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_PROMPTS, G, MAX_NEW, TEMPERATURE = 16, 8, 48, 1.2  # configs/trainer/toy.yaml: one default step's rollout


def clock():
    return time.perf_counter(), time.process_time()


def since(t):
    return round(time.perf_counter() - t[0], 2), round(time.process_time() - t[1], 2)


def batch(processor):
    """The 128 rows: chat texts (G copies of each prompt) and each row's clips (float32, 16 kHz)."""
    from audiothink.audio import load_audio
    from audiothink.data import load_samples, render_prompt
    from audiothink.prompts import training_prompt
    from audiothink.toy.data import default_root, ensure_toy

    files = ensure_toy(default_root())
    samples = load_samples(files["eval"]).samples[:N_PROMPTS]
    template = training_prompt()
    texts, waves = [], []
    for s in samples:
        clips = [load_audio(p, max_seconds=1.0)[0] for p in s.audio]  # model.max_audio_seconds of the toy config
        msg = [{"role": "user", "content": [{"type": "audio"}] * len(clips)
                + [{"type": "text", "text": render_prompt(s, template)}]}]
        text = processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        texts += [text] * G
        waves += [clips] * G
    return texts, waves, [len(s.audio) for s in samples]


def banned_ids(processor):
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]


def count_new(seqs: torch.Tensor, eos: int, pad: int) -> int:
    """New tokens per row up to and including the first end token (HF pads finished rows)."""
    n = 0
    for row in seqs.tolist():
        n += row.index(eos) + 1 if eos in row else len(row)
    return n


def features(processor, texts, waves):
    from audiothink.audio import SAMPLE_RATE

    flat = [w for clips in waves for w in clips]
    return processor(text=texts, audio=flat, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)


@torch.no_grad()
def hf_generate(model, processor, enc, pad_to: int | None = None):
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    t = clock()
    out = model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0,
                         max_new_tokens=MAX_NEW, suppress_tokens=banned_ids(processor), pad_token_id=tok.pad_token_id)
    wall, cpu = since(t)
    new = count_new(out[:, enc["input_ids"].shape[1]:], eos, tok.pad_token_id)
    return {"wall_s": wall, "cpu_s": cpu, "new_tokens": new, "tok_per_s": round(new / wall, 1)}


def run_hf(path, texts, waves, fast: bool):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"  # as TRL pads the prompts it hands generate
    t = clock()
    enc = features(processor, texts, waves)
    proc_wall, proc_cpu = since(t)
    res = {"processor_s": proc_wall, "processor_cpu_s": proc_cpu}
    if fast:
        # the trainer's switch (AudioGRPOTrainer.enable_fast_generation) on a stand-in with its two fields
        from types import SimpleNamespace

        from audiothink.fast_rollout import enable_fast_generation

        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        stand_in = SimpleNamespace(generation_config=model.generation_config, pad_to_multiple_of=None)
        enable_fast_generation(stand_in, compile_cache_dir="/tmp/vbench-inductor")
        enc = processor(text=texts, audio=[w for c in waves for w in c], sampling_rate=16000, return_tensors="pt",
                        padding=True, pad_to_multiple_of=stand_in.pad_to_multiple_of)
        first = hf_generate(model, processor, enc)  # compiles
        res["compile_s"] = first["wall_s"]
        res["first_call"] = first
    res.update(hf_generate(model, processor, enc))
    return res


def run_vllm(path, texts, waves):
    from accelerate import Accelerator
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from audiothink.audio import SAMPLE_RATE
    import audiothink.vllm_rollout as vr

    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    enc = features(processor, texts, waves)  # the trainer's expanded prompt ids (its own processor pass)
    ids = [r[m.bool()].tolist() for r, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    share = 0.3
    if not torch.cuda.is_available():
        # On CPU vLLM reads the share as the *process's* memory (RSS, here the HF model and the batch's features
        # too) plus its KV cache, and refuses to start when RSS alone is over it (the default 0.05 of 24 GiB
        # is): give it this process's RSS + 1 GiB of KV cache.
        import psutil

        total = psutil.virtual_memory().total
        share = round((psutil.Process().memory_info().rss + 2**30) / total, 3)
    t = clock()
    eng = vr.AudioVLLMGeneration(audio_processor=processor, waves=lambda: None, model=model,
                                 accelerator=Accelerator(cpu=not torch.cuda.is_available()),
                                 processing_class=processor.tokenizer, mode="colocate",
                                 gpu_memory_utilization=share,
                                 max_num_seqs=len(texts), temperature=TEMPERATURE, max_completion_length=MAX_NEW,
                                 generation_kwargs={"suppress_tokens": banned_ids(processor)})
    start = since(t)
    t = clock()
    eng.sync_weights()
    sync = since(t)
    t = clock()  # warm-up: one short prompt (one-time lazy set-up), not the timed batch
    wave = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Q?"}]}]
    from vllm import SamplingParams

    eng.llm._llm.generate(vr.vllm_prompts(processor, [chat], [[wave]], SAMPLE_RATE), SamplingParams(max_tokens=2),
                          use_tqdm=False)
    warm = since(t)
    res = {"start_s": start[0], "start_cpu_s": start[1], "sync_s": sync[0], "warmup_generate_s": warm[0],
           "gpu_memory_utilization": share}
    for key in ("cold", "warm"):
        eng.llm.llm_engine.reset_encoder_cache()
        eng.llm.reset_prefix_cache()
        t = clock()
        _, completion_ids, _, _ = eng.generate(ids, None, G, waves=waves)
        wall, cpu = since(t)
        new = sum(len(c) for c in completion_ids)
        res[key] = {"wall_s": wall, "cpu_s": cpu, "new_tokens": new, "tok_per_s": round(new / wall, 1)}
    return res


def make_big(src: Path, dst: Path, hidden: int, layers: int) -> Path:
    """The toy's 30 s copy with a random decoder of `hidden` x `layers` (seeded), saved to `dst`."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    config = Qwen2AudioConfig.from_pretrained(src)
    tc = config.text_config
    tc.hidden_size, tc.num_hidden_layers, tc.intermediate_size = hidden, layers, int(hidden * 8 / 3) // 64 * 64
    tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim = hidden // 64, max(1, hidden // 256), 64
    tc.layer_types = ["full_attention"] * layers  # the toy's list is per layer
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32)
    shutil.rmtree(dst, ignore_errors=True)
    model.save_pretrained(dst)
    for f in src.iterdir():  # processor + tokenizer of the toy's 30 s copy
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, dst / f.name)
    return dst


def child(args) -> int:
    """One engine on one model, in its own process (vLLM's engine and torch.compile leave state behind)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model_dir)
    texts, waves, _ = batch(processor)
    try:
        if args.engine == "vllm":
            res = run_vllm(args.model_dir, texts, waves)
        else:
            res = run_hf(args.model_dir, texts, waves, fast=args.engine == "hf_fast")
    except Exception as e:  # the error is the result (e.g. the fast path where torch.compile cannot run)
        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    Path(args.out_json).write_text(json.dumps(res))
    return 0


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["toy", "big"], choices=["toy", "big"])
    ap.add_argument("--engines", nargs="+", default=["hf", "hf_fast", "vllm"], choices=["hf", "hf_fast", "vllm"])
    ap.add_argument("--hidden", type=int, default=768, help="the larger model's decoder width")
    ap.add_argument("--layers", type=int, default=6, help="the larger model's decoder layers")
    ap.add_argument("--big-dir", type=Path, default=Path("/tmp/audiothink-bench-big"))
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "rollout_engines.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each engine process (vLLM on CPU: 1)")
    ap.add_argument("--_child", nargs=3, metavar=("ENGINE", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--table", type=Path, default=None, help="print the table of a results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        data = json.loads(args.table.read_text())
        print_table(data["models"], data["meta"])
        return 0
    if args._child:
        args.engine, args.model_dir, args.out_json = args._child
        torch.set_num_threads(args.threads)
        return child(args)

    from audiothink.toy.window30 import toy_30s_copy

    toy30 = toy_30s_copy()
    dirs = {"toy": toy30}
    if "big" in args.models:
        dirs["big"] = make_big(Path(toy30), args.big_dir, args.hidden, args.layers)
    from transformers import AutoConfig

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results = {}
    for m in args.models:
        cfg = AutoConfig.from_pretrained(dirs[m])
        from transformers import Qwen2AudioForConditionalGeneration

        with torch.device("meta"):
            n_dec = sum(p.numel() for n, p in Qwen2AudioForConditionalGeneration(cfg).named_parameters()
                        if "language_model" in n)
        results[m] = {"dir": str(dirs[m]), "decoder_params_M": round(n_dec / 1e6, 2),
                      "text_config": {k: getattr(cfg.text_config, k) for k in
                                      ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                                       "num_key_value_heads", "vocab_size")}, "engines": {}}
        for e in args.engines:
            out = Path(f"/tmp/vbench-{m}-{e}.json")
            out.unlink(missing_ok=True)
            t = time.perf_counter()
            print(f"== {m} / {e}", flush=True)
            subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--_child", e, str(dirs[m]),
                            str(out)], check=False, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            res = json.loads(out.read_text()) if out.exists() else {"error": "the engine process died (see above)"}
            res["process_wall_s"] = round(time.perf_counter() - t, 1)
            results[m]["engines"][e] = res
            print(json.dumps(res), flush=True)
    meta = {"date": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
            "uptime_before": uptime_before,
            "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "torch_threads": args.threads, "batch": f"{N_PROMPTS} prompts x G {G} = {N_PROMPTS * G} rows, "
            f"temperature {TEMPERATURE}, <= {MAX_NEW} new tokens", "torch": torch.__version__}
    try:
        import vllm

        meta["vllm"] = vllm.__version__
    except ImportError:
        pass
    print_table(results, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def rows_of(model: dict):
    """(label, wall, tokens, tok/s) per timed call, HF generate first."""
    e = model["engines"]
    out = []
    for name, key, label in (("hf", None, "HF generate"), ("hf_fast", None, "fast HF path (rollout.fast)"),
                             ("vllm", "cold", "vLLM (new batch)"), ("vllm", "warm", "vLLM (same batch again)")):
        if name not in e:
            continue
        r = e[name] if key is None else e[name].get(key)
        if r is None or "error" in (r if key is None else e[name]):
            out.append((label, None, e[name].get("error", "?")))
            continue
        out.append((label, r, None))
    return out


def print_table(results: dict, meta: dict) -> None:
    print(f"\nrollout engines, {meta['batch']} ({meta['date']}, {meta['machine']}, load: "
          f"{meta['uptime_before'].split('load average:')[-1].strip()})")
    for m, model in results.items():
        tc = model["text_config"]
        print(f"\n{m}: decoder {model['decoder_params_M']} M params (hidden {tc['hidden_size']}, "
              f"{tc['num_hidden_layers']} layers), 30 s audio window")
        hf = model["engines"].get("hf", {})
        base = hf.get("tok_per_s") if "error" not in hf else None
        base_cpu = hf["new_tokens"] / hf["cpu_s"] if base else None
        print(f"  {'engine':<34}{'wall s':>9}{'CPU s':>9}{'tokens':>8}{'tok/s':>8}{'x HF':>7}{'tok/CPU s':>11}"
              f"{'x HF':>7}")
        for label, r, err in rows_of(model):
            if r is None:
                print(f"  {label:<34}  error: {err}")
                continue
            ratio = f"{r['tok_per_s'] / base:.2f}" if base else "-"
            per_cpu = r["new_tokens"] / r["cpu_s"]
            ratio_cpu = f"{per_cpu / base_cpu:.2f}" if base_cpu else "-"
            print(f"  {label:<34}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['new_tokens']:>8}{r['tok_per_s']:>8.1f}"
                  f"{ratio:>7}{per_cpu:>11.1f}{ratio_cpu:>7}")
        if "processor_s" in hf:
            print(f"  HF feature extraction (apart, the trainer runs it for either engine): {hf['processor_s']:.1f} s")
        if "compile_s" in model["engines"].get("hf_fast", {}):
            print(f"  fast HF first call: {model['engines']['hf_fast']['compile_s']:.1f} s"
                  + ("" if torch.cuda.is_available() else " (on CPU transformers' generate does not compile: its "
                     "auto-compile is for cuda/xpu/neuron/tpu devices, so the fast path is the static KV cache + "
                     "64-token prompt buckets only)"))
        v = model["engines"].get("vllm", {})
        if "start_s" in v:
            print(f"  vLLM start-up (LLM(...)): {v['start_s']:.1f} s wall; weight sync {v['sync_s']:.2f} s; "
                  f"warm-up generate {v['warmup_generate_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
