"""HF: the 1 s toy vs its 30 s copy on the same 16 eval items: greedy completions equal? per-token logprob agreement
of the toy's greedy completion under both (teacher-forced). Tells whether vLLM on toy30 could stand in for the 1 s toy."""
import time
import numpy as np
import torch
from common import items, messages
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

torch.set_num_threads(1)
its = items(16)
res = {}
for path in ["/work/main/audiothink/toy/assets/model", "/work/notes/vllm/toy30"]:
    proc = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    banned = [proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
    texts = proc.apply_chat_template([messages(it) for it in its], tokenize=False, add_generation_prompt=True)
    enc = proc(text=texts, audio=[w for it in its for w in it.clips], sampling_rate=16000, return_tensors="pt", padding=True)
    t = time.time()
    with torch.no_grad():
        g = model.generate(**enc, do_sample=False, max_new_tokens=48, suppress_tokens=banned)
    res[path] = (proc, model, enc, g)
    print(path, f"greedy 16 items {time.time()-t:.1f}s")
(p1, m1, e1, g1), (p2, m2, e2, g2) = res.values()
print("prompt ids equal:", torch.equal(e1["input_ids"], e2["input_ids"]), " greedy completions equal:", torch.equal(g1, g2))
print("differing rows:", [i for i in range(16) if not torch.equal(g1[i], g2[i])])
n = e1["input_ids"].shape[1]
mask = torch.cat([e1["attention_mask"], torch.ones_like(g1[:, n:])], 1)
lps = []
for m, e in [(m1, e1), (m2, e2)]:
    with torch.no_grad():
        logits = m(input_ids=g1, attention_mask=mask, input_features=e["input_features"],
                   feature_attention_mask=e["feature_attention_mask"]).logits[:, n - 1:-1]
    lps.append(torch.log_softmax(logits.float(), -1).gather(-1, g1[:, n:, None])[..., 0])
valid = g1[:, n:] != p1.tokenizer.pad_token_id
a, b = lps[0][valid].numpy(), lps[1][valid].numpy()
print(f"teacher-forced logprobs of the toy's greedy tokens ({valid.sum().item()} tokens): corr {np.corrcoef(a, b)[0,1]:.6f}, "
      f"mean |diff| {np.abs(a-b).mean():.2e}, max {np.abs(a-b).max():.2e}")
# full-length clips (exactly 1.0 s) are the ones whose last conv frame differs
print("clip lengths (s):", sorted({round(len(w) / 16000, 3) for it in its for w in it.clips})[-5:])
