"""A tiny Qwen2.5-Omni thinker, built offline, for CPU tests of the Omni path.

The real thinker differs from Qwen2-Audio exactly where the trainer could go wrong: its audio encoder
takes variable-length clips (no 30 s padding; features are packed by `feature_attention_mask`), its
decoder uses 3-D multimodal RoPE whose positions depend on the audio lengths, and its processor is
Qwen2.5-Omni's (here `audiothink.models.OmniAudioProcessor`). This builds that architecture
(`Qwen2_5OmniThinkerForConditionalGeneration`) at toy size, on the toy's tokenizer with Omni's extra
special tokens. Random weights: it is for plumbing tests, not for learning.

    python -m audiothink.toy.omni /tmp/tiny-omni    # writes a loadable checkpoint directory
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoProcessor, Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

from audiothink.models import OmniAudioProcessor
from audiothink.toy import TOY_MODEL_DIR

# Omni's tokens besides Qwen2-Audio's: the processor reads them off the tokenizer.
OMNI_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}


def build_omni_processor(toy_dir: str | Path = TOY_MODEL_DIR) -> OmniAudioProcessor:
    """The toy's tokenizer, feature extractor and chat template, with Omni's special tokens."""
    base = AutoProcessor.from_pretrained(toy_dir)
    tokenizer = base.tokenizer
    new = [t for t in OMNI_TOKENS.values() if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    tokenizer.add_special_tokens({"additional_special_tokens": new})
    # named multimodal tokens (tokenizer.audio_token, ...), saved in tokenizer_config.json as Omni's are
    tokenizer._set_model_specific_special_tokens(special_tokens=dict(OMNI_TOKENS))
    return OmniAudioProcessor(
        feature_extractor=base.feature_extractor, tokenizer=tokenizer, chat_template=base.chat_template
    )


def omni_token_fields(tokenizer) -> dict[str, int]:
    """The thinker config's special-token ids, from a tokenizer with Omni's tokens."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in OMNI_TOKENS.items()}
    return dict(
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        # not a declared field, but read by the 3-D position code (the real config.json carries it too)
        vision_start_token_id=ids["vision_bos_token"],
    )


def build_omni_config(processor: OmniAudioProcessor, *, hidden: int = 64, layers: int = 2) -> Qwen2_5OmniThinkerConfig:
    tok = processor.tokenizer
    heads = 4
    half_head = hidden // heads // 2
    # mrope: the rotary half-dimension split over (time, height, width), as [16, 24, 24] is for 128-dim heads
    t = half_head // 4
    mrope = [t, (half_head - t) // 2, half_head - t - (half_head - t) // 2]
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": processor.feature_extractor.feature_size,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            # the encoder attends within windows of 2 * n_window mel frames (100 -> 2 s for the real model)
            "n_window": 50,
            "max_source_positions": 1500,
            "output_dim": hidden,
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
        },
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "tie_word_embeddings": True,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        **omni_token_fields(tok),
        tie_word_embeddings=True,
    )


def build_omni_thinker(processor: OmniAudioProcessor, seed: int = 0, **kw) -> Qwen2_5OmniThinkerForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(build_omni_config(processor, **kw))
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model


def save_tiny_omni(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Omni-thinker checkpoint (config, weights, processor) to `out_dir`."""
    out = Path(out_dir)
    processor = build_omni_processor()
    model = build_omni_thinker(processor, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(save_tiny_omni(sys.argv[1] if len(sys.argv) > 1 else "tiny-omni"))
