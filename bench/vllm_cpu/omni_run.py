"""vLLM 0.30 on a tiny Qwen2.5-Omni thinker (CPU). Usage: python omni_run.py MODEL_DIR"""
import os, socket, sys, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import numpy as np, torch
from common import messages, pick
if os.environ.get("PATCH_PROC"):
    # exploration only: hand vLLM the project's OmniAudioProcessor (a Qwen2_5OmniProcessor subclass) instead of
    # Qwen2_5OmniProcessor.from_pretrained, which needs torchvision for its video processor
    import transformers
    from audiothink.models import OmniAudioProcessor
    transformers.Qwen2_5OmniProcessor.from_pretrained = classmethod(lambda cls, path, *a, **k: OmniAudioProcessor.from_pretrained(path))
    transformers.models.qwen2_5_omni.processing_qwen2_5_omni.Qwen2_5OmniProcessor.from_pretrained = transformers.Qwen2_5OmniProcessor.from_pretrained
from vllm import LLM, SamplingParams
MODEL = sys.argv[1]
t = time.time()
llm = LLM(model=MODEL, distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
          gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=1024, max_num_batched_tokens=4096,
          max_num_seqs=16, seed=0, dtype="float32", limit_mm_per_prompt={"image": 0, "video": 0})
print(f"ENGINE START {time.time()-t:.1f}s", flush=True)
from transformers import AutoProcessor
from audiothink.vllm_rollout import vllm_prompts
from audiothink.models import OmniAudioProcessor
proc = OmniAudioProcessor.from_pretrained(MODEL)
one, four = pick()
rows = vllm_prompts(proc, [messages(one[0]), messages(four[0])], [list(one[0].clips), list(four[0].clips)], 16000)
out = llm.generate(rows, SamplingParams(temperature=0.0, max_tokens=16, logprobs=0), use_tqdm=False)
for o in out:
    print("prompt", len(o.prompt_token_ids), "->", o.outputs[0].token_ids[:8], o.outputs[0].logprobs[0])
