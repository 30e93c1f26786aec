"""Wrap the tiny Omni thinker (audiothink.toy.omni.save_tiny_omni) as a full Qwen2.5-Omni checkpoint, the layout vLLM's
Qwen2_5OmniThinkerForConditionalGeneration is registered for (architectures Qwen2_5OmniForConditionalGeneration,
model_type qwen2_5_omni, weights under thinker.*, a Qwen2_5OmniProcessor)."""
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from transformers import (AutoTokenizer, Qwen2_5OmniConfig, Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig,
                          Qwen2VLImageProcessor, WhisperFeatureExtractor)

src = Path(sys.argv[1]); dst = Path(sys.argv[2])
if dst.exists():
    shutil.rmtree(dst)
dst.mkdir(parents=True)
thinker = Qwen2_5OmniThinkerConfig.from_pretrained(src)
cfg = Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)
cfg.architectures = ["Qwen2_5OmniForConditionalGeneration"]
cfg.save_pretrained(dst)
sd = load_file(src / "model.safetensors")
save_file({f"thinker.{k}": v for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})
# processor: the tiny thinker's own files (OmniAudioProcessor: feature extractor + tokenizer). A real
# Qwen2_5OmniProcessor cannot be built here: its video processor requires torchvision (see FINDINGS.md).
for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(src / name, dst / name)
print("wrote", dst, sorted(p.name for p in dst.iterdir()))
