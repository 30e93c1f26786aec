"""Evaluation stops where training stops: a checkpoint whose tokenizer eos is `<|endoftext|>` while its
generation_config also stops on `<|im_end|>` (a shape Qwen checkpoints ship). TRL's rollouts stop on every
id of the generation_config; `generate_batch` (evaluate, the held-out summary) must use the same ids."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from audiothink.benchmarks import load_unified
from audiothink.benchmarks.runner import GenerationSettings, predict
from audiothink.benchmarks.store import PredictionStore
from audiothink.data import load_samples, to_dataset
from audiothink.formats import parse
from audiothink.inference import generate_answers, generate_batch, score
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Format
from audiothink.prompts import training_prompt
from tests.helpers import toy_grpo_args

# the prompt the toy was warm-started with: its replies are then well-formed, so only a wrong stop breaks them
PROMPT = training_prompt()

MAX_NEW = 40


@pytest.fixture(scope="module")
def im_end_checkpoint(tmp_path_factory, toy_model_dir):
    """The toy checkpoint with tokenizer eos `<|endoftext|>` and generation_config eos [`<|endoftext|>`,
    `<|im_end|>`]. The toy ends each answer with `<|im_end|>` (its chat template's end of turn)."""
    out = tmp_path_factory.mktemp("im_end") / "ckpt"
    shutil.copytree(toy_model_dir, out)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["eos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    processor = AutoProcessor.from_pretrained(out)
    tok = processor.tokenizer
    end_of_text, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [end_of_text, im_end]
    (out / "generation_config.json").write_text(json.dumps(gen_cfg))
    assert tok.eos_token_id == end_of_text != im_end
    return out


def _load(path):
    return Qwen2AudioForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_stop_ids_are_the_rollouts_ids(im_end_checkpoint, toy_files, tmp_path):
    from audiothink.inference import stop_token_ids

    model, processor = _load(im_end_checkpoint)
    tok = processor.tokenizer
    ids = stop_token_ids(model, tok)
    assert ids == tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format()], args=toy_grpo_args(tmp_path),
        train_dataset=to_dataset(load_samples(toy_files["train"]).samples[:8], PROMPT), max_audio_seconds=2.0,
    )
    assert ids == trainer.eos_token_ids  # what TRL 1.16's GRPOTrainer rollouts stop on
    # and a checkpoint whose generation_config lacks the tokenizer's eos: the tokenizer's comes first
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(model, tok) == ids


def test_rollouts_and_evaluation_stop_on_im_end(im_end_checkpoint, toy_files, tmp_path):
    model, processor = _load(im_end_checkpoint)
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    # training's rollouts (TRL's generation, 4 prompts x G = 4): each completion ends at its <|im_end|>
    train = load_samples(toy_files["train"]).samples[:4]
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format()],
        # near-greedy sampling: the toy's answers are then well-formed, so only a wrong stop can break them
        args=toy_grpo_args(tmp_path, max_completion_length=MAX_NEW, per_device_train_batch_size=16,
                           temperature=0.05),
        train_dataset=to_dataset(train, PROMPT), max_audio_seconds=2.0,
    )
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(4) for _ in range(4)])
    rollouts = [ids[mask.bool()].tolist() for ids, mask in zip(out["completion_ids"], out["completion_mask"])]
    assert len(rollouts) == 16 and all(r[-1] == im_end for r in rollouts)
    assert sum(parse(tok.decode(r, skip_special_tokens=True)).well_formed for r in rollouts) == 16

    # evaluation: the same stop, so the same well-formed answers
    model.eval()
    samples = load_samples(toy_files["eval"]).samples[:16]
    batch = generate_batch(model, processor, samples, PROMPT, max_new_tokens=MAX_NEW)
    assert sum(parse(t).well_formed for t in batch.texts) == 16
    lengths = batch.completion_mask.sum(1).tolist()
    assert max(lengths) < MAX_NEW
    assert [batch.completion_ids[i, n - 1].item() for i, n in enumerate(lengths)] == [im_end] * 16
    assert all(batch.ended)

    # the benchmark runner's records: nothing truncated, nothing malformed
    bench = load_unified(toy_files["eval"]).head(16)
    store = PredictionStore(tmp_path / "predictions.jsonl", {"test": "stop ids"})
    predict(model, processor, bench, PROMPT, store, GenerationSettings(batch_size=16, max_new_tokens=MAX_NEW),
            progress=False)
    records = list(store.records.values())
    assert len(records) == 16
    assert not any(r["truncated"] for r in records) and all(r["mode"] != "malformed" for r in records)
    assert all(r["output_tokens"] < MAX_NEW for r in records)

    # the training run's held-out summary
    outputs = generate_answers(model, processor, samples, PROMPT, max_new_tokens=MAX_NEW)
    assert score(samples, outputs)["overall"]["format_failure_rate"] == 0.0
