"""What the 30 s window costs the toy's HF path: one batch of 16 prompts x G 8 (toy eval items, mixed 1- and 4-clip),
processed as AudioGRPOTrainer._tokenize_prompts does, then HF generate (sampled, T 1.2, 48 new tokens) and one
train-style forward+backward of prompt+completion. Usage: python bench_window.py MODEL_DIR [threads]"""
import resource, sys, time
import torch
from common import items, messages
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

path = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
torch.manual_seed(0)
proc = AutoProcessor.from_pretrained(path)
model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
its = items(16)
rows = [it for it in its for _ in range(8)]
texts = proc.apply_chat_template([messages(it) for it in rows], tokenize=False, add_generation_prompt=True)
flat = [w for it in rows for w in it.clips]
banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]


def clock():
    return time.time(), time.process_time()


def since(c):
    return f"{time.time() - c[0]:.2f}s wall / {time.process_time() - c[1]:.2f}s cpu"


c = clock()
enc = proc(text=texts, audio=flat, sampling_rate=16000, return_tensors="pt", padding=True)
print(f"{path}: {len(rows)} rows, {len(flat)} clips; input_features {tuple(enc['input_features'].shape)}, "
      f"input_ids {tuple(enc['input_ids'].shape)}; processor {since(c)}", flush=True)
model.eval()
c = clock()
with torch.no_grad():
    feats = model.get_audio_features(enc["input_features"], enc["feature_attention_mask"]) if hasattr(model, "get_audio_features") else None
print(f"  audio tower + projector alone ({len(flat)} clips): {since(c)}", flush=True)
c = clock()
with torch.no_grad():
    g = model.generate(**enc, do_sample=True, temperature=1.2, max_new_tokens=48, suppress_tokens=banned)
n_new = (g[:, enc["input_ids"].shape[1]:] != proc.tokenizer.pad_token_id).sum().item()
t = time.time() - c[0]
print(f"  HF generate 128 x <=48: {since(c)}; {n_new} new tokens, {n_new / t:.0f} tok/s", flush=True)
model.train()
ids = g
mask = torch.cat([enc["attention_mask"], torch.ones_like(g[:, enc["input_ids"].shape[1]:])], 1)
c = clock()
out = model(input_ids=ids, attention_mask=mask, input_features=enc["input_features"],
            feature_attention_mask=enc["feature_attention_mask"])
out.logits[:, -48:].float().logsumexp(-1).mean().backward()
print(f"  train forward+backward (one micro-batch of 128): {since(c)}", flush=True)
print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
