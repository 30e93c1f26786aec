"""vLLM rollout prompts: unexpanded ids + audio, expanded by vLLM's rule into exactly the training ids.

vLLM expands each `<|AUDIO|>` of a prompt itself (qwen2_audio.py / qwen2_5_omni_thinker.py
`_get_prompt_updates`: HF feature extractor with padding="max_length", mel length from
`feature_attention_mask.sum(-1)`, then `_get_feat_extract_output_lengths`). These tests check that rule
against what the transformers processor inserts for training, clip by clip and token by token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from transformers import AutoProcessor, Qwen2AudioProcessor, WhisperFeatureExtractor

from audiothink.audio import SAMPLE_RATE
from audiothink.vllm_rollout import (
    audio_token_counts,
    audio_token_ids,
    collapse_audio_runs,
    vllm_prompts,
    vllm_rows_from_training_ids,
)


def expand_audio_placeholders(ids: Sequence[int], audio_id: int, counts: Sequence[int]) -> list[int]:
    """Replace the i-th single `audio_id` with `counts[i]` copies: what vLLM does to a prompt (a test helper)."""
    out, i = [], 0
    for t in ids:
        if t == audio_id:
            if i >= len(counts):
                raise ValueError(f"prompt has more audio placeholders than the {len(counts)} clips given")
            out.extend([audio_id] * counts[i])
            i += 1
        else:
            out.append(t)
    if i != len(counts):
        raise ValueError(f"prompt has {i} audio placeholders for {len(counts)} clips")
    return out


@pytest.fixture(scope="module")
def toy_processor(toy_model_dir):
    return AutoProcessor.from_pretrained(toy_model_dir)


@pytest.fixture(scope="module")
def processor_30s(toy_processor):
    """The toy's tokenizer and template with Qwen2-Audio's real window: 30 s at 16 kHz, 3000 mel frames."""
    fe = WhisperFeatureExtractor(feature_size=toy_processor.feature_extractor.feature_size, chunk_length=30)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=toy_processor.tokenizer,
                               chat_template=toy_processor.chat_template)


def _clip(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def _messages(n_clips: int, text="Which clip is higher?"):
    return [{"role": "user", "content": [{"type": "audio"}] * n_clips + [{"type": "text", "text": text}]}]


def _training_ids(processor, messages, clips) -> list[int]:
    """What AudioGRPOTrainer._tokenize_prompts trains on: the processor's expanded ids."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], audio=list(clips), sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    return enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()


# clip lengths in seconds; the toy's window is 2 s, so 2.5, 3.5 and 45 s are clipped by its feature extractor
TOY_PROMPTS = [[0.3], [1.0], [2.0], [45.0], [0.5, 2.5], [1.7, 0.2, 3.5], [0.05, 45.0, 1.0, 2.0]]
LONG_PROMPTS = [[10.0], [30.0], [45.0], [29.99, 31.0], [0.5, 90.0, 12.3]]


def _check_prompt(processor, seconds, seed=0):
    clips = [_clip(s, seed + i) for i, s in enumerate(seconds)]
    messages = _messages(len(clips))
    training = _training_ids(processor, messages, clips)
    audio_id, bos_id, eos_id = audio_token_ids(processor)

    (row,) = vllm_prompts(processor, [messages], [clips], SAMPLE_RATE)
    ids = row["prompt_token_ids"]
    # exactly one placeholder per clip, each between its markers
    positions = [i for i, t in enumerate(ids) if t == audio_id]
    assert len(positions) == len(clips)
    assert all(ids[i - 1] == bos_id and ids[i + 1] == eos_id for i in positions)
    # the audio travels with it, at its sample rate, in order
    audio = row["multi_modal_data"]["audio"]
    assert [sr for _, sr in audio] == [SAMPLE_RATE] * len(clips)
    assert all(np.array_equal(w, c) for (w, _), c in zip(audio, clips, strict=True))

    # per clip: vLLM's count == the run of <|AUDIO|> the processor inserted for training
    counts = audio_token_counts(processor, clips, SAMPLE_RATE)
    _, runs = collapse_audio_runs(training, audio_id)
    assert counts == runs
    # and the whole prompt: each placeholder replaced by its expansion is the training prompt, token for token
    assert expand_audio_placeholders(ids, audio_id, counts) == training
    # built from the training ids instead of the text: the same row
    (again,) = vllm_rows_from_training_ids(processor, [training], [clips], SAMPLE_RATE)
    assert again["prompt_token_ids"] == ids
    return counts


@pytest.mark.parametrize("seconds", TOY_PROMPTS, ids=lambda s: "+".join(f"{x}s" for x in s))
def test_toy_prompts_expand_to_the_training_ids(toy_processor, seconds):
    counts = _check_prompt(toy_processor, seconds)
    window = toy_processor.feature_extractor.chunk_length
    # clipped clips all get the full window's count, one token per 40 ms: 1 s -> 100 mel frames -> 50 -> 25
    full = round(window * 25)
    assert all(c == full for c, s in zip(counts, seconds, strict=True) if s >= window)
    assert all(0 < c < full for c, s in zip(counts, seconds, strict=True) if s < window * 0.99)


@pytest.mark.parametrize("seconds", LONG_PROMPTS, ids=lambda s: "+".join(f"{x}s" for x in s))
def test_30s_window_prompts_expand_to_the_training_ids(processor_30s, seconds):
    counts = _check_prompt(processor_30s, seconds)
    # 30 s -> 3000 mel frames -> 1500 -> 750 placeholders; anything longer is clipped to the same
    assert all(c == 750 for c, s in zip(counts, seconds, strict=True) if s >= 30.0)
    if seconds == [10.0]:
        assert counts == [250]


def test_omni_processor_prompts_expand_to_the_training_ids():
    """Qwen2.5-Omni's processor inserts the same counts (same rule in vLLM's qwen2_5_omni_thinker.py)."""
    omni = pytest.importorskip("audiothink.toy.omni")
    build = getattr(omni, "build_omni_processor", None)
    if build is None:
        pytest.skip("no tiny Omni processor builder")
    processor = build()
    for seconds in ([0.4], [2.0, 0.9], [45.0, 1.2]):
        _check_prompt(processor, seconds)


def test_batch_rows_keep_order_and_share_measurements(toy_processor):
    clips = [_clip(s, i) for i, s in enumerate([0.5, 1.5, 3.0])]
    rows_waves = [[clips[0]], [clips[1], clips[2]]] * 4  # G copies share the wave objects, as in the trainer
    messages = [_messages(len(w)) for w in rows_waves]
    training = [_training_ids(toy_processor, m, w) for m, w in zip(messages, rows_waves, strict=True)]
    rows = vllm_rows_from_training_ids(toy_processor, training, rows_waves, SAMPLE_RATE)
    assert [r["prompt_token_ids"] for r in rows] == [r["prompt_token_ids"] for r in
                                                     vllm_prompts(toy_processor, messages, rows_waves, SAMPLE_RATE)]
    assert [len(r["multi_modal_data"]["audio"]) for r in rows] == [1, 2] * 4


def test_mismatches_raise(toy_processor):
    clips = [_clip(0.8, 0), _clip(1.9, 1)]
    messages = _messages(2)
    training = _training_ids(toy_processor, messages, clips)
    audio_id, _, _ = audio_token_ids(toy_processor)
    with pytest.raises(ValueError, match="2 audio placeholders for 1 clips"):
        vllm_prompts(toy_processor, [messages], [clips[:1]], SAMPLE_RATE)
    text = toy_processor.tokenizer.decode(training)
    with pytest.raises(ValueError, match="already holds expanded"):
        vllm_prompts(toy_processor, [text], [clips], SAMPLE_RATE)
    # a training prompt whose runs differ from vLLM's rule (one placeholder too many) is refused
    i = training.index(audio_id)
    with pytest.raises(ValueError, match="vLLM would expand"):
        vllm_rows_from_training_ids(toy_processor, [training[:i] + [audio_id] + training[i:]], [clips], SAMPLE_RATE)
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        audio_token_counts(toy_processor, clips, 8000)


def test_collapse_and_expand_are_inverse():
    ids = [1, 9, 9, 9, 2, 9, 3, 9, 9]
    collapsed, runs = collapse_audio_runs(ids, 9)
    assert collapsed == [1, 9, 2, 9, 3, 9] and runs == [3, 1, 2]
    assert expand_audio_placeholders(collapsed, 9, runs) == ids
    with pytest.raises(ValueError):
        expand_audio_placeholders(collapsed, 9, [3, 1])
