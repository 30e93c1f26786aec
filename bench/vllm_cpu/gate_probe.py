"""Issue item 4's agreement gate, measured: vLLM (toy30) sampled logprobs vs the trainer-side recomputation (HF, the
1 s toy — equal to toy30 within 1.5e-6, compare_windows.py — and toy30 for a subset) for the same tokens, T 1.2.
Normal prompts, then the same prompts handed to vLLM without their audio."""
import os, socket, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
import numpy as np, torch
from common import items, messages
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from audiothink.vllm_rollout import vllm_prompts

T = 1.2
its = items(16)
rows_it = [it for it in its for _ in range(4)]
proc = AutoProcessor.from_pretrained("/work/notes/vllm/toy30")
banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
from vllm import LLM, SamplingParams
llm = LLM(model="/work/notes/vllm/toy30", distributed_executor_backend="external_launcher",
          logprobs_mode="processed_logprobs", gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=1024,
          max_num_batched_tokens=4096, max_num_seqs=128, seed=0, dtype="float32")
rows = vllm_prompts(proc, [messages(it) for it in rows_it], [list(it.clips) for it in rows_it], 16000)
sp = SamplingParams(temperature=T, max_tokens=48, logprobs=0, logit_bias={b: -100.0 for b in banned})
out = llm.generate(rows, sp, use_tqdm=False)
expanded = [list(o.prompt_token_ids) for o in out]
noaudio = llm.generate([{"prompt_token_ids": e} for e in expanded], sp, use_tqdm=False)


def recompute(model, path_proc, outs):
    """trainer side: logits / T, log_softmax, gather the sampled tokens; prompt from the HF processor (with audio)."""
    res = []
    for it, o in zip(rows_it, outs):
        text = path_proc.apply_chat_template(messages(it), tokenize=False, add_generation_prompt=True)
        enc = path_proc(text=[text], audio=list(it.clips), sampling_rate=16000, return_tensors="pt")
        comp = torch.tensor([list(o.outputs[0].token_ids)])
        ids = torch.cat([enc["input_ids"], comp], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=enc["input_features"],
                           feature_attention_mask=enc["feature_attention_mask"]).logits[0, enc["input_ids"].shape[1] - 1:-1]
        lp = torch.log_softmax(logits.float() / T, -1).gather(-1, comp[0, :, None])[:, 0]
        res.append(lp.numpy())
    return res


def gate(tag, outs, hf):
    v = np.concatenate([[d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs])
    h = np.concatenate(hf)
    print(f"{tag}: {len(v)} tokens  corr {np.corrcoef(v, h)[0, 1]:.6f}  mean|diff| {np.abs(v - h).mean():.3e}  "
          f"max {np.abs(v - h).max():.3e}", flush=True)


torch.set_num_threads(1)
p1 = AutoProcessor.from_pretrained("/work/main/audiothink/toy/assets/model")
m1 = Qwen2AudioForConditionalGeneration.from_pretrained("/work/main/audiothink/toy/assets/model", dtype=torch.float32).eval()
t = time.time()
gate("with audio   (HF 1 s toy recomputes)", out, recompute(m1, p1, out))
gate("vLLM no audio (HF 1 s toy recomputes)", noaudio, recompute(m1, p1, noaudio))
print(f"  HF recompute 2 x 64 rows {time.time() - t:.1f}s")
m30 = Qwen2AudioForConditionalGeneration.from_pretrained("/work/notes/vllm/toy30", dtype=torch.float32).eval()
sub = slice(0, 16)
rows_it = rows_it[sub]
gate("with audio, 16 rows (HF toy30 recomputes)", out[sub], recompute(m30, proc, out[sub]))
