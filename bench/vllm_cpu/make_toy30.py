"""Copy of the toy checkpoint with the Whisper 30 s window (vLLM's Qwen2-Audio schema wants 3000 mel frames).

audio max_source_positions 50 -> 1500; feature extractor chunk_length 1 -> 30 (n_samples 480000, nb_max_frames 3000).
The encoder's positional table (audio_tower.embed_positions.weight, [50, 64]) is nn.Embedding with requires_grad=False,
left at its N(0, 0.02) init by the warm start: rows 0..49 kept, rows 50..1499 new N(0, 0.02) draws (seeded).
"""
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

src = Path("/work/main/audiothink/toy/assets/model")
dst = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/notes/vllm/toy30")
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
cfg = json.loads((dst / "config.json").read_text())
cfg["audio_config"]["max_source_positions"] = 1500
(dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
pc = json.loads((dst / "processor_config.json").read_text())
fe = pc["feature_extractor"]
fe.update(chunk_length=30, n_samples=30 * 16000, nb_max_frames=3000)
(dst / "processor_config.json").write_text(json.dumps(pc, indent=2) + "\n")
sd = load_file(dst / "model.safetensors")
old = sd["audio_tower.embed_positions.weight"]
g = torch.Generator().manual_seed(1234)
new = torch.randn(1500 - old.shape[0], old.shape[1], generator=g) * 0.02
sd["audio_tower.embed_positions.weight"] = torch.cat([old, new]).contiguous()
save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
print("wrote", dst, {k: list(v.shape) for k, v in sd.items() if "embed_positions" in k})
