"""Weight sync into the in-process vLLM on CPU: TRL 1.16's per-tensor load_weights vs vLLM's reload_weights."""
import os, socket, sys, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import numpy as np, torch
from common import messages, pick
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from audiothink.vllm_rollout import vllm_prompts, checkpoint_name

MODEL = "/work/notes/vllm/toy30"
proc = AutoProcessor.from_pretrained(MODEL)
one, four = pick()
prompts = [messages(one[0]), messages(four[0])]
waves = [list(one[0].clips), list(four[0].clips)]
rows = vllm_prompts(proc, prompts, waves, 16000)
banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
from vllm import LLM, SamplingParams
t = time.time()
llm = LLM(model=MODEL, distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
          gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=1024, max_num_batched_tokens=4096,
          max_num_seqs=128, seed=0, dtype="float32")
print(f"ENGINE START {time.time()-t:.1f}s", flush=True)
greedy = SamplingParams(temperature=0.0, max_tokens=48, logprobs=0, logit_bias={b: -100.0 for b in banned})


def vg():
    res = llm.generate(rows, sampling_params=greedy, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), [d[tk].logprob for d, tk in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]) for o in res]


def hg(model):
    outs = []
    for m, w in zip(prompts, waves):
        text = proc.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        enc = proc(text=[text], audio=w, sampling_rate=16000, return_tensors="pt", padding=True)
        with torch.no_grad():
            g = model.generate(**enc, max_new_tokens=48, do_sample=False, suppress_tokens=banned,
                               output_scores=True, return_dict_in_generate=True)
        toks = g.sequences[0, enc["input_ids"].shape[1]:].tolist()
        outs.append((toks, [torch.log_softmax(s[0], -1)[tk].item() for s, tk in zip(g.scores, toks)]))
    return outs


def compare(tag, v, h):
    for (vt, vl), (ht, hl) in zip(v, h):
        n = min(len(vl), len(hl))
        d = np.abs(np.array(vl[:n]) - np.array(hl[:n])) if n else np.array([0.0])
        print(f"  {tag}: tokens equal {vt == ht}  |dlogprob| mean {d.mean():.2e} max {d.max():.2e}  "
              f"vLLM {proc.tokenizer.decode(vt)!r}  HF {proc.tokenizer.decode(ht)!r}", flush=True)


v0 = vg()
model = Qwen2AudioForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
compare("before sync", v0, hg(model))
runner = llm.llm_engine.model_executor.driver_worker.model_runner
inner = runner.model
print("inner class", type(inner).__name__, "runner", type(runner).__name__)
# what the CPU backend did to the parameters
for n, p in inner.named_parameters():
    if "layers.0" in n or "embed_tokens" in n or "lm_head" in n or "projector" in n:
        print(f"  vLLM param {n}: shape {tuple(p.shape)} weight_loader {hasattr(p, 'weight_loader')}")
print("in-memory HF names:", [n for n, _ in model.named_parameters()][:3], "...", len(list(model.named_parameters())))

# perturb the HF model (seeded)
g = torch.Generator().manual_seed(7)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "embed_positions" not in n:
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std().clamp(min=1e-3))
h1 = hg(model)
mapped = [(checkpoint_name(n, "qwen2_audio"), p.detach().clone()) for n, p in model.named_parameters()]

# A: TRL 1.16 colocate sync: model.load_weights([(name, param)]) per tensor
ok, bad = [], {}
t = time.time()
for name, p in mapped:
    try:
        inner.load_weights([(name, p)]); ok.append(name)
    except Exception as e:
        bad[name] = f"{type(e).__name__}: {str(e)[:120]}"
llm.reset_prefix_cache()
print(f"A) TRL per-tensor load_weights: {len(ok)} ok, {len(bad)} failed ({time.time()-t:.2f}s)")
for k, v in list(bad.items())[:40]:
    print("   failed", k, "->", v)
print("   ok sample:", ok[:50])
try:
    compare("after A", vg(), h1)
except Exception as e:
    print("  generate after A failed:", type(e).__name__, str(e)[:300])

# unmapped in-memory names
for n in ["model.language_model.norm.weight", "model.audio_tower.conv1.weight"]:
    p = dict(model.named_parameters())[n]
    try:
        r = inner.load_weights([(n, p.detach())]); print("   unmapped", n, "-> returned", r)
    except Exception as e:
        print("   unmapped", n, "->", type(e).__name__, str(e)[:200])

# E: stale encoder cache? fresh model copy with only the projector perturbed, per-tensor sync of the projector
from copy import deepcopy
base = Qwen2AudioForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter([(checkpoint_name(n, "qwen2_audio"), p.detach()) for n, p in base.named_parameters()]), "is_checkpoint_format": True})
llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
compare("E0 back to the checkpoint (reload_weights + reset_encoder_cache)", vg(), hg(base))
with torch.no_grad():
    base.model.multi_modal_projector.linear.weight.mul_(-1.0)
he = hg(base)
for n, p in base.named_parameters():
    if "projector" in n:
        inner.load_weights([(checkpoint_name(n, "qwen2_audio"), p.detach())])
llm.reset_prefix_cache()
compare("E1 projector negated, TRL per-tensor sync + reset_prefix_cache only", vg(), he)
llm.llm_engine.reset_encoder_cache()
compare("E2 ... + llm.llm_engine.reset_encoder_cache()", vg(), he)
sys.exit(0) if os.environ.get("ONLY_E") else None

# B: vLLM's layerwise reload (re-runs process_weights_after_loading), in-process
t = time.time()
try:
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(mapped), "is_checkpoint_format": True})
    llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
    print(f"B) collective_rpc('reload_weights', weights_iterator=...): {time.time()-t:.2f}s")
    compare("after B", vg(), h1)
except Exception as e:
    import traceback; traceback.print_exc()
    print("B) failed:", type(e).__name__, str(e)[:300])

# C: a second update through B (a training loop syncs every step): perturb again
with torch.no_grad():
    for n, p in model.named_parameters():
        if "embed_positions" not in n:
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std().clamp(min=1e-3))
h2 = hg(model)
mapped = [(checkpoint_name(n, "qwen2_audio"), p.detach().clone()) for n, p in model.named_parameters()]
t = time.time()
try:
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(mapped), "is_checkpoint_format": True})
    llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
    print(f"C) second reload_weights: {time.time()-t:.2f}s")
    compare("after C", vg(), h2)
    # D: partial update (decoder only) through reload_weights
    dec = [(n, p) for n, p in mapped if n.startswith("language_model.")]
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(dec), "is_checkpoint_format": True})
    llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
    compare("after D (decoder-only reload, same values)", vg(), h2)
except Exception as e:
    import traceback; traceback.print_exc()
    print("C/D failed:", type(e).__name__, str(e)[:300])
