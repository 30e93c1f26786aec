"""One process of tests/test_fast_rollout.py: the toy trainer's fast rollout, compiled on CPU.

    python -m tests.compile_probe CACHE_DIR WORK_DIR BUCKETS [--second-trainer]

Builds an AudioGRPOTrainer on the embedded toy with `fast_generation=True, compile_cache_dir=CACHE_DIR` (the
product's switch), makes transformers compile generate on CPU too (it compiles only on GPU-class devices
unless told), then rolls out: the first prompt bucket twice, then one rollout in each of the next BUCKETS - 1
buckets; with --second-trainer, the first trainer then rolls out in the first bucket again, and a second
trainer on a second model (same process) does too. After each rollout it prints one JSON line: the padded prompt
length (the bucket), which trainer, the static KV cache length transformers will use next
(`_previous_max_cache_length`) and torch.compile's running totals (graphs dynamo compiled, inductor FX graph
cache hits and misses). The last line names the cache folder inductor used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.utils import counters
from transformers import AutoProcessor, CompileConfig, Qwen2AudioForConditionalGeneration
from trl import GRPOConfig

from audiothink.audio import write_wav
from audiothink.data import Sample, to_dataset
from audiothink.toy import TOY_MODEL_DIR
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Format

PROMPT = "{question}\n{choices}\nAnswer inside <answer></answer>."


def fast_trainer(cache_dir: str, work: Path, samples: list[Sample]) -> AudioGRPOTrainer:
    model = Qwen2AudioForConditionalGeneration.from_pretrained(TOY_MODEL_DIR)
    processor = AutoProcessor.from_pretrained(TOY_MODEL_DIR)
    args = GRPOConfig(output_dir=str(work / "run"), num_generations=2, per_device_train_batch_size=4, max_steps=1,
                      max_completion_length=4, report_to=[], save_strategy="no", bf16=False, seed=0,
                      generation_kwargs={"min_new_tokens": 4})
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()], args=args,
                               train_dataset=to_dataset(samples, PROMPT), fast_generation=True,
                               compile_cache_dir=cache_dir)
    compile_config = CompileConfig(mode="default")  # reduce-overhead's CUDA graphs have no CPU counterpart
    compile_config._compile_all_devices = True
    trainer.generation_config.compile_config = compile_config
    return trainer


def rollout(trainer: AudioGRPOTrainer, batch: list[dict], *, generate: bool = True) -> int:
    """The trainer's own tokenizing (and HF rollout, if `generate`); returns the padded prompt length."""
    trainer._pending_waves = trainer._load_waves(batch)
    with trainer._audio({}):
        prompt_ids, _, fields = trainer._tokenize_prompts([r["prompt"] for r in batch])
    trainer._pending_waves = None
    if generate:
        trainer._generate_single_turn(prompt_ids, None, fields, 2)
    bucket = trainer.pad_to_multiple_of
    return -(-max(len(p) for p in prompt_ids) // bucket) * bucket


def report(bucket: int, instance: int, trainer: AudioGRPOTrainer) -> None:
    cache_len = getattr(trainer.model, "_previous_max_cache_length", None)
    print(json.dumps({"bucket": bucket, "trainer": instance, "cache_len": cache_len,
                      "graphs": counters["stats"].get("unique_graphs", 0),
                      "fx_hits": counters["inductor"].get("fxgraph_cache_hit", 0),
                      "fx_misses": counters["inductor"].get("fxgraph_cache_miss", 0)}), flush=True)


def main(cache_dir: str, work: str, buckets: int, second_trainer: bool) -> None:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = work / "clip.wav"
    write_wav(clip, 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000))
    samples = [Sample(id=str(i), audio=(str(clip),), question="high or low?", choices=("low", "high"), answer="low")
               for i in range(2)]
    trainer = fast_trainer(cache_dir, work / "1", samples)
    rows = [dict(to_dataset(samples, PROMPT)[0]) for _ in range(4)]
    filler, done, last_bucket = "", 0, None
    while done < buckets + 1:
        batch = [dict(r, prompt=r["prompt"].replace("?", "?" + filler, 1)) for r in rows]
        if done > 1 and rollout(trainer, batch, generate=False) == last_bucket:
            filler += " please listen"  # longer prompts until the next bucket
            continue
        last_bucket = rollout(trainer, batch)
        report(last_bucket, 1, trainer)
        done += 1
    if second_trainer:
        report(rollout(trainer, rows), 1, trainer)  # back to the first bucket
        other = fast_trainer(cache_dir, work / "2", samples)
        report(rollout(other, rows), 2, other)
    print(json.dumps({"cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--second-trainer" in sys.argv[4:])
