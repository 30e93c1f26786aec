"""A tiny model of the real Qwen2-Audio architecture, built offline.

Why a real architecture and not a toy network: every trap the project guards against (audio features
missing from a log-prob pass, placeholder tokens sampled into completions, PEFT wrapping the audio encoder)
lives in the transformers classes themselves. So the toy is `Qwen2AudioForConditionalGeneration` with a
Whisper-style encoder and a Qwen2 decoder, just small: a 2 s encoder window, 32 mel bins, a few layers.

The tokenizer is a byte-level BPE trained on the toy corpus, with the chat/audio special tokens of
Qwen2-Audio and the four format tags as single, *non-special* tokens (TRL decodes completions with
`skip_special_tokens=True`, which would otherwise erase the tags).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from audiothink.audio import SAMPLE_RATE
from audiothink.formats import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from audiothink.toy.data import WINDOW_SECONDS

# Qwen2-Audio's own special tokens, so the processor and chat template behave as with the real model.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
FORMAT_TAGS = [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
NUM_MEL_BINS = 32

# Chat template: Qwen2-Audio's default, with a shorter system line (every token costs CPU time here).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou listen carefully.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (prompts and targets of the toy set)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=1024,
    )
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioProcessor:
    """Whisper-style log-mel features over a 2 s window (25 audio tokens per second, as the real model)."""
    fe = WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=int(WINDOW_SECONDS),
        n_fft=400,
        return_attention_mask=True,
    )
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, *, hidden: int = 128, layers: int = 2, heads: int = 4
                 ) -> Qwen2AudioConfig:
    frames = int(WINDOW_SECONDS * SAMPLE_RATE / 160)
    return Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": NUM_MEL_BINS,
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            # the encoder insists on exactly 2 * max_source_positions mel frames
            "max_source_positions": frames // 2,
            "dropout": 0.0,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 1024,
            "tie_word_embeddings": True,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **kw) -> Qwen2AudioForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(build_config(tokenizer, **kw))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
