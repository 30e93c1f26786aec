"""No audio marker is ever generated: `<|AUDIO|>` and the `<|audio_bos|>`/`<|audio_eos|>` around it have
no features behind them when sampled. The marker ids are read off the *processor* here (not off the
trainer's own list, which a bug could shorten), all three are made the model's overwhelming favourites,
and neither a real rollout (AudioGRPOTrainer's generation) nor `inference.generate_batch` may emit one."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from audiothink.data import load_samples, to_dataset
from audiothink.inference import build_inputs, generate_batch
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Format
from tests.helpers import PROMPT, load_toy, toy_grpo_args

MARKERS = ("audio_token", "audio_bos_token", "audio_eos_token")


def marker_ids(processor) -> list[int]:
    """`<|AUDIO|>`, `<|audio_bos|>`, `<|audio_eos|>` as the processor names them, as token ids."""
    names = [getattr(processor, m) for m in MARKERS]
    ids = processor.tokenizer.convert_tokens_to_ids(names)
    assert len(set(ids)) == 3 and processor.tokenizer.unk_token_id not in ids, (names, ids)
    return ids


@contextmanager
def boosted(model, ids: list[int], bias: float = 1e4):
    """Add `bias` to the logits of `ids` (the LM head's output) while inside."""

    def hook(module, inputs, output):
        output[..., ids] += bias
        return output

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def toy_and_markers(toy_model_dir):
    model, processor = load_toy(toy_model_dir)
    ids = marker_ids(processor)
    assert ids == processor.tokenizer.convert_tokens_to_ids(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    return model, processor, ids


def test_boost_works_without_the_ban(toy_and_markers, toy_files):
    """The check can fail: with the ban lifted, the boosted markers are all the model says."""
    model, processor, ids = toy_and_markers
    samples = load_samples(toy_files["eval"]).samples[:2]
    enc = build_inputs(processor, samples, PROMPT, 2.0)
    with boosted(model, ids), torch.no_grad():
        out = model.eval().generate(**enc, max_new_tokens=4, do_sample=False)
    assert torch.isin(out[:, enc["input_ids"].size(1):], torch.tensor(ids)).all()


def test_rollouts_never_sample_an_audio_marker(toy_and_markers, toy_files, tmp_path):
    model, processor, ids = toy_and_markers
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format()], args=toy_grpo_args(tmp_path),
        train_dataset=to_dataset(load_samples(toy_files["train"]).samples[:8], PROMPT), max_audio_seconds=2.0,
    )
    batch = [trainer.train_dataset[i] for i in range(4) for _ in range(4)]
    trainer.model.train()
    with boosted(trainer.model, ids):
        out = trainer._generate_and_score_completions(batch)
    generated = out["completion_ids"][out["completion_mask"].bool()]
    assert generated.numel() > 0
    found = sorted(set(generated[torch.isin(generated, torch.tensor(ids))].tolist()))
    assert not found, f"sampled audio markers {processor.tokenizer.convert_ids_to_tokens(found)}"


def test_evaluation_never_generates_an_audio_marker(toy_and_markers, toy_files):
    model, processor, ids = toy_and_markers
    samples = load_samples(toy_files["eval"]).samples[:8]
    for do_sample in (False, True):
        with boosted(model, ids):
            batch = generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=12, do_sample=do_sample)
        found = sorted(set(batch.completion_ids[torch.isin(batch.completion_ids, torch.tensor(ids))].tolist()))
        assert not found, f"generated audio markers {processor.tokenizer.convert_ids_to_tokens(found)}"
