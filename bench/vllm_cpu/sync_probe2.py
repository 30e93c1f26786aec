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



model = Qwen2AudioForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
inner = llm.llm_engine.model_executor.driver_worker.model_runner.model
def reset():
    llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
compare("start", vg(), hg(model))
# E3: projector negated, per-tensor sync of the projector, then BOTH caches reset
with torch.no_grad():
    model.model.multi_modal_projector.linear.weight.mul_(-1.0)
h = hg(model)
for n, p in model.named_parameters():
    if "projector" in n:
        inner.load_weights([(checkpoint_name(n, "qwen2_audio"), p.detach())])
llm.reset_prefix_cache()
compare("E3a projector per-tensor + reset_prefix_cache only", vg(), h)
reset()
compare("E3b ... + reset_encoder_cache + reset_prefix_cache", vg(), h)
# F: tied embed/lm_head (weight_loader kept, remove_weight=False): does a per-tensor load reach the logits?
with torch.no_grad():
    model.model.multi_modal_projector.linear.weight.mul_(-1.0)  # back
    emb = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(3)
    emb.add_(torch.randn(emb.shape, generator=g) * emb.std())
print("HF tied:", model.lm_head.weight.data_ptr() == emb.data_ptr())
h = hg(model)
for n, p in model.named_parameters():
    if "projector" in n or "embed_tokens" in n:
        r = inner.load_weights([(checkpoint_name(n, "qwen2_audio"), p.detach())])
        print("  loaded", n, "->", r)
reset()
ve = dict(inner.named_parameters())
print("  vLLM embed == HF emb:", torch.equal(ve["language_model.model.embed_tokens.weight"][: emb.shape[0]], emb),
      " vLLM lm_head == HF emb:", torch.equal(ve["language_model.lm_head.weight"][: emb.shape[0]], emb),
      " same storage:", ve["language_model.lm_head.weight"].data_ptr() == ve["language_model.model.embed_tokens.weight"].data_ptr())
compare("F per-tensor embed_tokens (tied lm_head)", vg(), h)
llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter([(checkpoint_name(n, "qwen2_audio"), p.detach()) for n, p in model.named_parameters()]), "is_checkpoint_format": True})
reset()
compare("F2 same weights via reload_weights", vg(), h)
