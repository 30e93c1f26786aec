"""AudioGRPOTrainer on the tiny Qwen2-Audio: audio reaches every forward, training moves the weights."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioModel

from audiothink.data import load_samples, to_dataset
from audiothink.trainer import AudioGRPOTrainer, pack_clips, unpack_clips
from audiothink.rewards import Accuracy, AdaptiveThink, Format
from tests.helpers import PROMPT, load_toy, toy_grpo_args

LM_ONLY = r"^model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def _dataset(toy_files, n=8):
    samples = load_samples(toy_files["train"]).samples
    # both one-clip and multi-clip (toy v3: four-clip) prompts in every batch
    two = [s for s in samples if len(s.audio) > 1][: n // 2]
    one = [s for s in samples if len(s.audio) == 1][: n - len(two)]
    assert two and one
    return to_dataset(two + one, PROMPT)


def _trainer(toy_model_dir, toy_files, tmp_path, *, lora: bool, beta=0.04, num_iterations=2, max_steps=2, **cfg):
    model, processor = load_toy(toy_model_dir)
    args = toy_grpo_args(
        tmp_path, max_steps=max_steps, beta=beta, num_iterations=num_iterations,
        learning_rate=cfg.pop("learning_rate", 1e-3), **cfg,
    )
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=LM_ONLY, task_type="CAUSAL_LM") if lora else None
    return AudioGRPOTrainer(
        model=model,
        processor=processor,
        reward_funcs=[AdaptiveThink(), Format(), Accuracy()],
        args=args,
        train_dataset=_dataset(toy_files),
        peft_config=peft_config,
        max_audio_seconds=2.0,
    )


@contextmanager
def spy_audio_forwards(*models, backbone=Qwen2AudioModel):
    """Record, for every call of every `backbone` (the multimodal model under the LM head) inside `models`,
    its sequence length and audio inputs."""
    calls, handles = [], []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(
            {
                "seq_len": ids.size(1),
                "rows": ids.size(0),
                "features": kwargs.get("input_features") is not None,
                "mask": kwargs.get("feature_attention_mask") is not None,
                "audio_tokens": int((ids == module.config.audio_token_id).sum()),
            }
        )

    for model in models:
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, backbone):
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    assert handles, f"no {backbone.__name__} found to spy on"
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _full_passes(calls):
    # Decode steps of generate() feed one token at a time from the KV cache: no audio needed there.
    return [c for c in calls if c["seq_len"] > 1]


def assert_audio_in_every_pass(calls, expected: int = 5):
    """Every full forward had features, mask and placeholders; by default (num_iterations = 2, beta > 0)
    5 of them: generation prefill, old and reference log-probs, 2 policy passes."""
    passes = _full_passes(calls)
    missing = [c for c in passes if not (c["features"] and c["mask"])]
    assert not missing, f"forward passes without audio features: {missing}"
    assert len(passes) == expected, passes
    assert all(c["audio_tokens"] > 0 for c in passes)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_every_forward_gets_audio(toy_model_dir, toy_files, tmp_path, lora):
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=lora, beta=0.04, num_iterations=2)
    assert (trainer.ref_model is None) == lora  # LoRA: reference = adapter disabled; full: a separate copy
    with spy_audio_forwards(trainer.model, trainer.ref_model) as calls:
        trainer.train()
    # One generation (num_iterations=2 reuses it), then old + reference log-probs, then 2 policy passes.
    assert_audio_in_every_pass(calls, expected=5)


def test_spy_catches_a_text_only_logprob_pass(toy_model_dir, toy_files, tmp_path, monkeypatch):
    """The spy test above can fail: drop the features from the log-prob passes and it sees it."""
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, beta=0.04, max_steps=1)
    monkeypatch.setattr("audiothink.trainer.unpack_clips", lambda rows, start, end: {})
    with spy_audio_forwards(trainer.model, trainer.ref_model) as calls:
        trainer.train()
    assert any(not c["features"] for c in _full_passes(calls))


def test_two_steps_change_weights_and_log(toy_model_dir, toy_files, tmp_path):
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, beta=0.0, num_iterations=1, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    # Every trainable tensor that receives gradient moves (the audio encoder's included: audio is in the graph).
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not [n for n in unchanged if "audio_tower" in n and "embed_positions" not in n], unchanged
    assert len(unchanged) < len(before) // 10, unchanged
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert math.isfinite(h["loss"])
        assert math.isfinite(h["rewards/adaptive_think/mean"])
        assert 0.0 <= h["think/rate"] <= 1.0
    sample = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    record = json.loads(sample[0])
    assert set(record["completions"][0]["rewards"]) == {"adaptive_think", "format", "accuracy"}


def test_lora_stays_off_the_audio_encoder(toy_model_dir, toy_files, tmp_path):
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=True, max_steps=1)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)


def test_completions_never_contain_audio_placeholders(toy_model_dir, toy_files, tmp_path):
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, max_steps=1)
    banned = trainer.banned_token_ids
    audio_id = trainer.model.config.audio_token_id
    assert audio_id in banned
    # Make the placeholder the model's overwhelming favourite: sampling must still never pick it.
    lm_head = trainer.model.get_output_embeddings()

    def boost(module, inputs, output):
        output[..., banned] += 1e4
        return output

    handle = lm_head.register_forward_hook(boost)
    try:
        batch = [trainer.train_dataset[i] for i in range(4) for _ in range(4)]
        trainer.model.train()
        out = trainer._generate_and_score_completions(batch)
    finally:
        handle.remove()
    ids = out["completion_ids"][out["completion_mask"].bool()]
    assert ids.numel() > 0
    assert not torch.isin(ids, torch.tensor(banned)).any()


def test_pack_unpack_keeps_clip_order():
    counts = [2, 1, 3]
    feats = torch.arange(6 * 2 * 5, dtype=torch.float32).view(6, 2, 5)
    masks = torch.ones(6, 5, dtype=torch.long)
    packed = pack_clips({"input_features": feats, "feature_attention_mask": masks}, counts)
    assert packed["audio__input_features"].shape == (3, 3, 2, 5)
    assert torch.equal(unpack_clips(packed, 0, 3)["input_features"], feats)
    assert torch.equal(unpack_clips(packed, 1, 2)["input_features"], feats[2:3])
    assert torch.equal(unpack_clips(packed, 1, 3)["input_features"], feats[2:6])
    # shuffled rows stay consistent with their clips
    perm = torch.tensor([2, 0, 1])
    shuffled = {k: v[perm] for k, v in packed.items()}
    assert torch.equal(unpack_clips(shuffled, 0, 1)["input_features"], feats[3:6])


def test_fast_generation_sets_static_cache_and_buckets(toy_model_dir, toy_files, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # put back after the test
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, max_steps=1)
    assert trainer.generation_config.cache_implementation is None and trainer.pad_to_multiple_of is None
    assert trainer.enable_fast_generation(bucket=32, compile_cache_dir=tmp_path / "compiled") == str(
        tmp_path / "compiled")
    gc = trainer.generation_config
    assert (gc.cache_implementation, gc.disable_compile, trainer.pad_to_multiple_of) == ("static", False, 32)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compiled")


def test_fast_generation_from_the_constructor_uses_the_configured_cache(toy_model_dir, toy_files, tmp_path,
                                                                       monkeypatch):
    """rollout.fast + rollout.compile_cache_dir, as audiothink.train passes them."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model, processor = load_toy(toy_model_dir)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()],
                               args=toy_grpo_args(tmp_path), train_dataset=_dataset(toy_files),
                               fast_generation=True, compile_cache_dir=str(tmp_path / "compiled"))
    assert trainer.generation_config.cache_implementation == "static" and trainer.pad_to_multiple_of == 64
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compiled") and (tmp_path / "compiled").is_dir()


def _tagged_dataset(toy_files, n=8):
    """_dataset's rows with the row id in the question: every prompt names the row its audio belongs to."""
    import dataclasses

    samples = load_samples(toy_files["train"]).samples
    two = [s for s in samples if len(s.audio) > 1][: n // 2]
    one = [s for s in samples if len(s.audio) == 1][: n - len(two)]
    tagged = [dataclasses.replace(s, question=f"{s.question} [row {s.id}]") for s in two + one]
    return to_dataset(tagged, PROMPT)


@contextmanager
def spy_audio_inputs(*models, backbone=Qwen2AudioModel):
    """Record every full forward's ids and audio inputs (clones), for every `backbone` inside `models`."""
    calls, handles = [], []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.size(1) > 1 and kwargs.get("input_features") is not None:
            calls.append({"ids": ids.detach().clone(), "features": kwargs["input_features"].detach().clone(),
                          "mask": kwargs["feature_attention_mask"].detach().clone()})

    for model in models:
        for module in (model.modules() if model is not None else []):
            if isinstance(module, backbone):
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def test_each_chunk_gets_the_audio_of_its_own_rows(toy_model_dir, toy_files, tmp_path):
    """Issue 17: with more than one chunk per generated batch (gradient accumulation 2, as the 7B recipe; TRL
    shuffles the generated batch and splits it), every forward (generation, old and reference log-probs in
    chunks, the policy pass of each micro-batch) must get the features of the clips of the rows it scores,
    in order: not the first chunk's, not another row's. Each prompt names its row; the features each row
    must get are the processor's for that row alone."""
    model, processor = load_toy(toy_model_dir)
    args = toy_grpo_args(tmp_path, max_steps=1, beta=0.04, num_iterations=1, gradient_accumulation_steps=2)
    dataset = _tagged_dataset(toy_files)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()], args=args,
                               train_dataset=dataset, max_audio_seconds=2.0)
    assert trainer.args.steps_per_generation == 2
    rows = {row["id"]: row for row in dataset}
    expected = {}
    for rid, row in rows.items():
        waves = trainer._load_waves([row])[0]
        expected[rid] = processor.feature_extractor(waves, sampling_rate=16_000, return_attention_mask=True,
                                                    padding="max_length", return_tensors="pt")
    tok = processor.tokenizer
    bos = tok.convert_tokens_to_ids("<|audio_bos|>")

    with spy_audio_inputs(trainer.model, trainer.ref_model) as calls:
        trainer.train()
    # generation of the 16-row batch, reference log-probs in 2 chunks of 8, 2 policy micro-batches (no old
    # log-probs: both micro-batches come before the one optimizer step, so they are on-policy)
    assert [c["ids"].size(0) for c in calls] == [16, 8, 8, 8, 8], [c["ids"].size(0) for c in calls]
    seen_orders = set()
    for call in calls:
        clip = 0
        order = []
        for ids in call["ids"]:
            rid = next(r for r in rows if f"[row {r}]" in tok.decode(ids))
            order.append(rid)
            n = int((ids == bos).sum())
            assert n == len(rows[rid]["audio"])
            want = expected[rid]
            assert torch.equal(call["mask"][clip : clip + n].cpu(), want["attention_mask"]), rid
            assert torch.allclose(call["features"][clip : clip + n].float().cpu(), want["input_features"]), rid
            clip += n
        assert clip == call["features"].size(0)  # no clip left over for a row that is not there
        seen_orders.add(tuple(order))
    assert len(seen_orders) > 2  # the chunks hold different rows (TRL shuffles before it splits)


def test_a_trainer_built_from_python_keeps_transformers_console(toy_model_dir, toy_files, tmp_path):
    """Issue 18: the console policy is audiothink.train's (use_run_console), not the trainer's: a Python user of
    AudioGRPOTrainer keeps transformers' progress bar / printer and gets no health or progress-line callback."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from audiothink.plumbing.progress import ProgressLine, use_run_console
    from audiothink.plumbing.health import HealthMonitor

    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, max_steps=1)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert ProgressCallback in kinds or PrinterCallback in kinds, kinds
    assert not {ProgressLine, HealthMonitor} & set(kinds), kinds
    health = use_run_console(trainer)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert ProgressCallback not in kinds and PrinterCallback not in kinds, kinds
    # the monitor right after the flow callback, before any logger (TensorBoard, metrics.jsonl): they see health/*
    assert trainer.callback_handler.callbacks[1] is health and kinds[-1] is ProgressLine, kinds
