"""A tiny Qwen3-Omni thinker (mixture of experts), built offline, for CPU tests of the Qwen3-Omni path.

Qwen3-Omni-30B-A3B's thinker differs from the Qwen2.5-Omni thinker where the trainer could go wrong: its
language model is a mixture of experts (128 experts, 8 routed per token, ~3 B parameters active; the experts of a
layer are two fused 3-D parameters, `mlp.experts.gate_up_proj` and `mlp.experts.down_proj`, the router is
`mlp.gate`), its audio encoder (AuT) downsamples 8x with three stride-2 convolutions over 1 s chunks (13 audio
tokens a second, not 25), its audio markers are `<|audio_start|><|audio_pad|><|audio_end|>`, and its processor
is Qwen3-Omni's (here `audiothink.models.Qwen3OmniAudioProcessor`). This builds that architecture
(`Qwen3OmniMoeThinkerForConditionalGeneration`) at toy size, in the published config's shape (the same sub-models
and routing: 4 experts, top-2, normalised top-k weights), on the toy's tokenizer with Qwen3-Omni's special tokens.
Random weights: it is for plumbing tests, not for learning.

    python -m audiothink.toy.qwen3_omni /tmp/tiny-qwen3-omni    # writes a loadable checkpoint directory (~1 MB)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from transformers import (AutoProcessor, Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration,
                          WhisperFeatureExtractor)

from audiothink.models import Qwen3OmniAudioProcessor
from audiothink.toy import TOY_MODEL_DIR

# Qwen3-Omni's multimodal tokens (its tokenizer_config.json names them so; the processor reads them off the
# tokenizer). Qwen2.5-Omni's were <|AUDIO|>, <|audio_bos|>, <|audio_eos|>.
QWEN3_OMNI_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}

# A ChatML template in Qwen3-Omni's shape for audio + text: no default system turn (a system message is written
# only when the chat has one), each audio part as <|audio_start|><|audio_pad|><|audio_end|> where it stands in
# the user turn, the text after it. Written for the toy; the real checkpoint brings its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Clips the tiny processor takes whole (its feature extractor's window): two of the encoder's 1 s chunks.
WINDOW_SECONDS = 2


def build_qwen3_omni_processor(toy_dir: str | Path = TOY_MODEL_DIR) -> Qwen3OmniAudioProcessor:
    """The toy's tokenizer (with Qwen3-Omni's special tokens) and mel settings, a 2 s window, the template above."""
    base = AutoProcessor.from_pretrained(toy_dir)
    tokenizer = base.tokenizer
    new = [t for t in QWEN3_OMNI_TOKENS.values()
           if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    tokenizer.add_special_tokens({"additional_special_tokens": new})
    tokenizer._set_model_specific_special_tokens(special_tokens=dict(QWEN3_OMNI_TOKENS))
    fe = base.feature_extractor
    feature_extractor = WhisperFeatureExtractor(feature_size=fe.feature_size, sampling_rate=fe.sampling_rate,
                                                hop_length=fe.hop_length, chunk_length=WINDOW_SECONDS,
                                                n_fft=fe.n_fft, padding_value=fe.padding_value)
    return Qwen3OmniAudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                   chat_template=CHAT_TEMPLATE)


def qwen3_omni_token_fields(tokenizer) -> dict[str, int]:
    """The thinker config's special-token ids, from a tokenizer with Qwen3-Omni's tokens."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN3_OMNI_TOKENS.items()}
    return dict(
        audio_token_id=ids["audio_token"],
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        # not a declared field, but read by the position code (the real config.json carries it too)
        vision_start_token_id=ids["vision_bos_token"],
    )


def build_qwen3_omni_config(processor: Qwen3OmniAudioProcessor, *, hidden: int = 64, layers: int = 2,
                            experts: int = 4, top_k: int = 2) -> Qwen3OmniMoeThinkerConfig:
    """The published thinker's structure at toy size. Published (Qwen3-Omni-30B-A3B, thinker_config): hidden 2048,
    48 layers, 32 heads / 4 KV heads of 128, 128 experts of 768, 8 routed; AuT encoder 32 layers of 1280, 128 mels."""
    tok = processor.tokenizer
    heads, head_dim = 4, 16
    return Qwen3OmniMoeThinkerConfig(
        audio_config={
            "num_mel_bins": processor.feature_extractor.feature_size,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            # the convolutions run over chunks of 2 * n_window mel frames (1 s); attention over n_window_infer
            # frames (8 s), both as published
            "n_window": processor.n_window,
            "n_window_infer": 800,
            "downsample_hidden_size": 8,
            "max_source_positions": 1500,
            "output_dim": hidden,
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": hidden,
            "deepstack_visual_indexes": [0], "num_position_embeddings": 16,
        },
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            # every layer a mixture of experts (decoder_sparse_step 1, no mlp_only_layers), as published
            "num_experts": experts,
            "num_experts_per_tok": top_k,
            "moe_intermediate_size": 32,
            "intermediate_size": hidden * 2,
            "norm_topk_prob": True,
            "router_aux_loss_coef": 0.001,
            "max_position_embeddings": 2048,
            # interleaved 3-D RoPE: the rotary half-dimension split over (time, height, width) as [24, 20, 20]
            # is for 128-dim heads
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 2, 2],
                                "interleaved": True, "mrope_interleaved": True},
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        **qwen3_omni_token_fields(tok),
        position_id_per_seconds=13,
        tie_word_embeddings=False,
    )


def build_qwen3_omni_thinker(processor: Qwen3OmniAudioProcessor, seed: int = 0,
                             **kw) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(build_qwen3_omni_config(processor, **kw))
    # transformers' init (std 0.02) gives router logits near 0: near-ties between experts that any change flips;
    # std 0.5 makes the routing decisive, as a trained router's is
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model


def save_tiny_qwen3_omni(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3-Omni-thinker checkpoint (config, weights, processor) to `out_dir`."""
    out = Path(out_dir)
    processor = build_qwen3_omni_processor()
    model = build_qwen3_omni_thinker(processor, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# Bump when the builder changes what it writes: a cached copy of an older build is then not reused.
BUILD_VERSION = 1


def tiny_qwen3_omni_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the tiny Qwen3-Omni thinker (``${tiny_qwen3_omni_dir:}``, model=qwen3_omni_tiny's path),
    built on first use (~1 MB, a few seconds; the build is seeded, so every machine gets the same weights) under
    ``cache_dir`` (default ``$AUDIOTHINK_CACHE`` or ``~/.cache/audiothink``, then ``qwen3-omni-tiny-v<N>``) and
    reused after that. Written to a temporary folder and renamed into place: concurrent callers (test sessions,
    the ranks of a launch) never read a half-written one."""
    root = Path(cache_dir or os.environ.get("AUDIOTHINK_CACHE") or "~/.cache/audiothink").expanduser()
    dst = root / f"qwen3-omni-tiny-v{BUILD_VERSION}"
    if (dst / "model.safetensors").is_file():
        return dst
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny_qwen3_omni(tmp)
    try:
        os.replace(tmp, dst)
    except OSError:  # another process renamed its build first: the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


if __name__ == "__main__":
    print(save_tiny_qwen3_omni(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen3-omni"))
