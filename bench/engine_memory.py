"""Memory per GPU of the model states of Qwen2-Audio-7B-Instruct under each launcher config (README "Which
engine when"): LoRA / full fine-tuning x DDP / ZeRO-2 / ZeRO-3 / FSDP2.

    python bench/engine_memory.py            # 8 GPUs (the configs' num_processes)
    python bench/engine_memory.py --gpus 16

The parameter counts come from the architecture built on the meta device from the published dimensions
(bench/gpu_step.py's QWEN2_AUDIO_7B, no weights needed); LoRA's from PEFT applied to it with the project's
7B LoRA config (configs/model/qwen2_audio_7b.yaml). Bytes per GPU, with N GPUs, Ψ all parameters, Φ the
trainable ones (Ψ in full fine-tuning, the adapter with LoRA):

    DDP      2 (Ψ − Φ) + k Φ            everything on every GPU; k = 16 with LoRA (PEFT keeps the adapter in
                                        fp32: weight 4 + gradient 4 + Adam m, v 8), k = 8 in full fine-tuning
                                        (bf16 weight 2 + gradient 2 + AdamW state 4, no fp32 master copy)
    ZeRO-2   2 Ψ + 18 Φ / N             bf16 weights on every GPU; sharded: bf16 gradient 2, fp32 gradient 4,
                                        fp32 master weight 4, Adam m, v 8 (DeepSpeed's own accounting)
    ZeRO-3   (2 (Ψ − Φ) + 18 Φ) / N     everything sharded; 18 bytes per trainable parameter, its bf16
                                        weight included (DeepSpeed's own accounting for stage 3)
    FSDP2    (2 (Ψ − Φ) + 16 Φ) / N     frozen bf16 weights and trainable fp32 ones (accelerate keeps them
                                        in fp32 under bf16 mixed precision: weight 4 + gradient 4 + m, v 8),
                                        all sharded

Not counted: activations, the KV cache of the rollouts, logits, communication buckets, the CUDA context
(1-2 GB), and the transient gathers: ZeRO-3 gathers the whole bf16 model on every GPU for each rollout
(TRL's ds3_gather_for_generation: + 2 Ψ (N − 1) / N while generating) and the largest layer in the update;
FSDP2 gathers one layer unit at a time, also in every decoding step.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("DDP", "ZeRO-2", "ZeRO-3", "FSDP2")


def state_bytes(engine: str, total: int, trainable: int, gpus: int) -> float:
    """Bytes of model states per GPU (the formulas in this module's docstring)."""
    frozen = total - trainable
    if engine == "DDP":
        return 2 * frozen + (8 if trainable == total else 16) * trainable
    if engine == "ZeRO-2":
        return 2 * total + 18 * trainable / gpus
    if engine == "ZeRO-3":
        return (2 * frozen + 18 * trainable) / gpus
    if engine == "FSDP2":
        return (2 * frozen + 16 * trainable) / gpus
    raise ValueError(engine)


def parameter_counts() -> dict[str, int]:
    """Ψ (all, and per part) and Φ of LoRA for Qwen2-Audio-7B-Instruct, on the meta device."""
    import torch
    from omegaconf import OmegaConf
    from peft import get_peft_model
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from audiothink.loading import build_peft_config

    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    gpu_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_step)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**gpu_step.QWEN2_AUDIO_7B))
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "language_model": sum(p.numel() for p in model.model.language_model.parameters())
        + sum(p.numel() for p in model.lm_head.parameters()),
        "audio_encoder": sum(p.numel() for p in model.model.audio_tower.parameters()),
        "projector": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
    }
    lora_cfg = OmegaConf.load(ROOT / "configs" / "model" / "qwen2_audio_7b.yaml").model.lora
    peft_model = get_peft_model(model, build_peft_config(lora_cfg))
    counts["lora"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    counts["lora_r"] = int(lora_cfg.r)
    return counts


def table(gpus: int = 8, counts: dict[str, int] | None = None) -> str:
    """The README's table: GiB of model states per GPU."""
    c = counts or parameter_counts()
    rows = [f"| model states per GPU, {gpus} GPUs | " + " | ".join(ENGINES) + " |", "|---|" + "---:|" * len(ENGINES)]
    for name, trainable in ((f"LoRA r = {c['lora_r']} (Φ = {c['lora'] / 1e6:.1f} M)", c["lora"]),
                            (f"full fine-tuning (Φ = Ψ = {c['total'] / 1e9:.2f} B)", c["total"])):
        cells = [f"{state_bytes(e, c['total'], trainable, gpus) / GiB:.1f} GiB" for e in ENGINES]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    c = parameter_counts()
    print(f"Ψ = {c['total']:,} parameters: language model {c['language_model']:,}, audio encoder "
          f"{c['audio_encoder']:,}, projector {c['projector']:,}; LoRA r = {c['lora_r']}: Φ = {c['lora']:,}\n")
    print(table(args.gpus, c))


if __name__ == "__main__":
    main()
