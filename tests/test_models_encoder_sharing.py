"""share_audio_encoder_passes: one encoder pass per distinct clip, with outputs and gradients unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from audiothink.models import share_audio_encoder_passes
from audiothink.toy.omni import build_omni_processor, build_omni_thinker
from audiothink.toy.qwen3_omni import build_qwen3_omni_processor, build_qwen3_omni_thinker
from tests.helpers import load_toy


def _qwen2_audio(toy_model_dir):
    return load_toy(toy_model_dir)


def _omni(_):
    processor = build_omni_processor()
    return build_omni_thinker(processor), processor


def _qwen3_omni(_):
    processor = build_qwen3_omni_processor()
    return build_qwen3_omni_thinker(processor), processor


MODELS = {"qwen2_audio": _qwen2_audio, "omni": _omni, "qwen3_omni": _qwen3_omni}


def _batch(processor, clips_per_row):
    """Rows built from three clips; `clips_per_row` lists each row's clip indices (repeats = G copies)."""
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 9000, 24000)]
    messages = [
        [{"role": "user", "content": [{"type": "audio"}] * len(row) + [{"type": "text", "text": "how many?"}]}]
        for row in clips_per_row
    ]
    texts = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    flat = [waves[i] for row in clips_per_row for i in row]
    return processor(text=texts, audio=flat, sampling_rate=16000, return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", list(MODELS))
def test_same_logits_and_gradients_with_fewer_encoder_passes(toy_model_dir, family):
    model, processor = MODELS[family](toy_model_dir)
    model.train(False)
    batch = _batch(processor, [[0], [0], [1, 2], [0], [1, 2], [2]])  # 8 clips requested, 3 distinct
    shared = copy.deepcopy(model)
    passes = share_audio_encoder_passes(shared)

    outputs = []
    for m in (model, shared):
        m.zero_grad()
        logits = m(**batch).logits
        (logits.float() ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if "audio_tower" in n and p.grad is not None}
        outputs.append((logits.detach(), grads))
    (plain, plain_grads), (fast, fast_grads) = outputs
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert plain_grads and plain_grads.keys() == fast_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert (passes.requested, passes.encoded) == (8, 3)


@pytest.mark.parametrize("family", list(MODELS))
def test_distinct_clips_are_all_encoded(toy_model_dir, family):
    model, processor = MODELS[family](toy_model_dir)
    passes = share_audio_encoder_passes(model)
    with torch.no_grad():
        model(**_batch(processor, [[0], [1], [2]]))
    assert (passes.requested, passes.encoded) == (3, 3)


def test_a_copy_of_the_model_uses_its_own_encoder(toy_model_dir):
    """TRL deep-copies the policy for the reference model: the copy must not run the original's encoder."""
    model, processor = _qwen2_audio(toy_model_dir)
    share_audio_encoder_passes(model)
    ref = copy.deepcopy(model)
    batch = _batch(processor, [[0], [0]])
    with torch.no_grad():
        for p in model.model.audio_tower.parameters():
            p.add_(0.5)  # the policy's encoder trains away from the reference's
        policy_logits, ref_logits = model(**batch).logits, ref(**batch).logits
        untouched = copy.deepcopy(ref)
        untouched.model.audio_tower._forward_pre_hooks.clear()
        untouched.model.audio_tower._forward_hooks.clear()
        expected_ref = untouched(**batch).logits
    torch.testing.assert_close(ref_logits, expected_ref)
    assert not torch.allclose(policy_logits, ref_logits)


def test_same_features_with_different_masks_are_not_shared(toy_model_dir):
    model, _ = _qwen2_audio(toy_model_dir)
    passes = share_audio_encoder_passes(model)
    tower = model.model.audio_tower
    frames = 2 * tower.config.max_source_positions
    features = torch.randn(1, tower.config.num_mel_bins, frames).repeat(2, 1, 1)
    mask = torch.ones(2, 1, frames // 2, frames // 2, dtype=torch.bool)
    mask[1, :, :, 10:] = False
    with torch.no_grad():
        out = tower(features, attention_mask=mask).last_hidden_state
    assert (passes.requested, passes.encoded) == (2, 2)
    assert out.shape[0] == 2


def test_sharing_twice_installs_one_set_of_hooks(toy_model_dir):
    model, _ = _qwen2_audio(toy_model_dir)
    first = share_audio_encoder_passes(model)
    assert share_audio_encoder_passes(model) is first
    assert len(model.model.audio_tower._forward_pre_hooks) == 1


def test_a_model_without_audio_encoder_is_refused():
    with pytest.raises(ValueError, match="no Qwen2-Audio or Qwen2.5-Omni audio encoder"):
        share_audio_encoder_passes(torch.nn.Linear(2, 2))
