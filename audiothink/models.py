"""What the supported model families (Qwen2-Audio, Qwen2.5-Omni, Qwen3-Omni) need beyond `from_pretrained`.

- `OmniAudioProcessor`: Qwen2.5-Omni's processor restricted to audio + text. transformers'
  `Qwen2_5OmniProcessor` insists on an image and a video processor, and the video one needs torchvision;
  audio-only training never calls either. Tokenization and `<|AUDIO|>` expansion are Qwen2.5-Omni's own
  (this class only changes which sub-processors exist), so a model trained with it sees exactly what the
  full processor would give it.
- `share_audio_encoder_passes`: in GRPO every prompt appears G times in a batch (one copy per completion),
  so the audio encoder - a 0.6 B-parameter Whisper-large run over a padded 30 s window, for Qwen2-Audio -
  would encode each clip G times in the rollout prefill and in every log-prob pass. This runs it once per
  distinct clip and copies the result, which is exact (same inputs, same outputs; gradients, when the
  encoder is trained, add up over the copies as they would have).

Example::

    from audiothink.models import OmniAudioProcessor, share_audio_encoder_passes
    processor = OmniAudioProcessor.from_pretrained("Qwen/Qwen2.5-Omni-7B")   # no torchvision needed
    share_audio_encoder_passes(model)   # Qwen2AudioForConditionalGeneration or the Omni thinker
"""

from __future__ import annotations

import logging

import torch
from transformers import Qwen2_5OmniProcessor, Qwen3OmniMoeProcessor
from transformers.processing_utils import OmniModalProcessorMixin

log = logging.getLogger(__name__)


def _init_audio_only(processor, feature_extractor, tokenizer, chat_template, family: str) -> None:
    """The audio-and-text processors' shared set-up: only the feature extractor and tokenizer are attached, and the
    tokens the Omni processors read off the tokenizer (image/video ones only where it has them) are set with their
    ids. ``family`` names the checkpoint kind in the error ("an Omni", "a Qwen3-Omni")."""
    OmniModalProcessorMixin.__init__(processor, feature_extractor, tokenizer, chat_template=chat_template)
    for name in ("audio_token", "audio_bos_token", "audio_eos_token", "image_token", "video_token",
                 "vision_bos_token", "vision_eos_token"):
        setattr(processor, name, getattr(tokenizer, name, None))
    if processor.audio_token is None:
        raise ValueError(f"{type(processor).__name__}: the tokenizer defines no audio_token (is this {family} "
                         "checkpoint?)")
    for name in ("audio", "image", "video"):
        token = getattr(processor, f"{name}_token")
        setattr(processor, f"{name}_token_id", None if token is None else tokenizer.convert_tokens_to_ids(token))


class OmniAudioProcessor(Qwen2_5OmniProcessor):
    """Qwen2.5-Omni's processor for audio and text: a feature extractor and a tokenizer, nothing else.

    Loads from a full Omni checkpoint (its `preprocessor_config.json` holds the Whisper feature extractor's
    fields next to the image processor's; the latter are ignored) or from a directory this class saved.
    """

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        _init_audio_only(self, feature_extractor, tokenizer, chat_template, "an Omni")


class Qwen3OmniAudioProcessor(Qwen3OmniMoeProcessor):
    """Qwen3-Omni's processor for audio and text: a feature extractor and a tokenizer, nothing else.

    As `OmniAudioProcessor` is for Qwen2.5-Omni: `Qwen3OmniMoeProcessor` wants an image and a video processor
    (the video one needs torchvision). Tokenization, the `<|audio_pad|>` expansion (13 tokens per 1 s chunk of
    `n_window * 2` mel frames, Qwen3-Omni's rule) and the features are Qwen3-Omni's own. Loads from a full
    Qwen3-Omni checkpoint or from a directory this class saved.
    """

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        _init_audio_only(self, feature_extractor, tokenizer, chat_template, "a Qwen3-Omni")

    @property
    def model_input_names(self):
        # Qwen3OmniMoeProcessor's adds the image and video processors' names; there are none here
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.feature_extractor.model_input_names
                                  + ["feature_attention_mask"]))


# -- one encoder pass per distinct clip --------------------------------------------------------------------


def _distinct_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first index of each distinct row, row -> its distinct row), rows compared across all `tensors`.

    None when every row is distinct (nothing to share). Exact comparison: float features are compared by
    value after an exact upcast, masks as numbers.
    """
    n = tensors[0].size(0)
    if n < 2:
        return None
    flat = torch.cat([t.reshape(n, -1).to(torch.float32) for t in tensors], dim=1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    distinct = int(inverse.max()) + 1
    if distinct == n:
        return None
    # the first row of each group stands for it (scatter_reduce "amin" over row numbers)
    rows = torch.arange(n, device=inverse.device)
    first = torch.full((distinct,), n, dtype=torch.long, device=inverse.device).scatter_reduce(
        0, inverse, rows, reduce="amin"
    )
    return first, inverse


class _SharedPasses:
    """Counts, for tests and logs: clips the encoder was asked for vs clips it actually encoded."""

    def __init__(self):
        self.requested = 0
        self.encoded = 0


# Forward hooks rather than a replaced `forward`: hooks get the module they run on, so a deep copy of the
# model (TRL's reference model under full fine-tuning) shares with itself, never with the original.
_STASH = "_audiothink_shared"


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)


def _with_arg(args: tuple, kwargs: dict, index: int, name: str, value) -> tuple[tuple, dict]:
    if name in kwargs or len(args) <= index:
        return args, {**kwargs, name: value}
    return args[:index] + (value,) + args[index + 1 :], kwargs


def _share_qwen2_audio(tower: torch.nn.Module, stats: _SharedPasses) -> None:
    # Qwen2AudioEncoder.forward(input_features (clips, mels, 3000), attention_mask (clips, 1, T, T) | None)
    # -> last_hidden_state (clips, T', d): row i of the output depends on row i of the inputs only.
    def before(module, args, kwargs):
        features = _arg(args, kwargs, 0, "input_features")
        mask = _arg(args, kwargs, 1, "attention_mask")
        stats.requested += features.size(0)
        groups = None if torch.compiler.is_compiling() else _distinct_rows(features)
        if groups is not None and mask is not None and not torch.equal(mask, mask[groups[0]][groups[1]]):
            groups = None  # same features, different masks: not the same clip after all
        if groups is None:
            stats.encoded += features.size(0)
            return None
        first, inverse = groups
        stats.encoded += first.numel()
        setattr(module, _STASH, inverse)
        args, kwargs = _with_arg(args, kwargs, 0, "input_features", features[first])
        if mask is not None:
            args, kwargs = _with_arg(args, kwargs, 1, "attention_mask", mask[first])
        return args, kwargs

    def after(module, args, output):
        inverse = module.__dict__.pop(_STASH, None)
        if inverse is not None:
            output.last_hidden_state = output.last_hidden_state[inverse]
        return output

    tower.register_forward_pre_hook(before, with_kwargs=True)
    tower.register_forward_hook(after)


def _qwen2_5_omni_rows(module: torch.nn.Module, lens: torch.Tensor) -> torch.Tensor:
    return module._get_feat_extract_output_lengths(lens)[1]


def _qwen3_omni_rows(module: torch.nn.Module, lens: torch.Tensor) -> torch.Tensor:
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    return _get_feat_extract_output_lengths(lens, module.n_window)


def _share_omni(tower: torch.nn.Module, stats: _SharedPasses, out_rows=_qwen2_5_omni_rows) -> None:
    # Qwen2_5OmniAudioEncoder.forward(input_features (mels, total frames: the clips concatenated),
    # feature_lens (clips,), aftercnn_lens (clips,)) -> last_hidden_state (total output rows, d): clip i
    # contributes a block of out_rows(feature_lens[i]) rows, in order. Qwen3OmniMoeAudioEncoder.forward takes
    # the same first two (no aftercnn_lens) and returns the same blocks. Qwen3-Omni's encoder pads its 1 s chunks
    # to the batch's longest and sizes its attention windows by it: the distinct clips hold that longest chunk
    # too, so their outputs are the full batch's, bit for bit.
    def before(module, args, kwargs):
        features = _arg(args, kwargs, 0, "input_features")
        lens = _arg(args, kwargs, 1, "feature_lens")
        after_cnn = _arg(args, kwargs, 2, "aftercnn_lens")
        if features is None or lens is None or torch.compiler.is_compiling():
            return None
        stats.requested += lens.numel()
        pieces = torch.split(features, lens.tolist(), dim=1)
        padded = torch.nn.utils.rnn.pad_sequence([p.T for p in pieces], batch_first=True)
        groups = _distinct_rows(padded, lens[:, None])
        if groups is None:
            stats.encoded += lens.numel()
            return None
        first, inverse = groups
        stats.encoded += first.numel()
        out_lens = out_rows(module, lens[first])
        setattr(module, _STASH, (inverse, out_lens.tolist()))
        args, kwargs = _with_arg(args, kwargs, 0, "input_features", torch.cat([pieces[i] for i in first.tolist()], 1))
        args, kwargs = _with_arg(args, kwargs, 1, "feature_lens", lens[first])
        if after_cnn is not None:
            args, kwargs = _with_arg(args, kwargs, 2, "aftercnn_lens", after_cnn[first])
        return args, kwargs

    def after(module, args, output):
        stash = module.__dict__.pop(_STASH, None)
        if stash is not None:
            inverse, out_lens = stash
            blocks = torch.split(output.last_hidden_state, out_lens)
            output.last_hidden_state = torch.cat([blocks[i] for i in inverse.tolist()], dim=0)
            if getattr(output, "pooler_output", None) is not None:
                output.pooler_output = output.last_hidden_state
        return output

    tower.register_forward_pre_hook(before, with_kwargs=True)
    tower.register_forward_hook(after)


_TOWERS = {"Qwen2AudioEncoder": _share_qwen2_audio, "Qwen2_5OmniAudioEncoder": _share_omni,
           "Qwen3OmniMoeAudioEncoder": lambda tower, stats: _share_omni(tower, stats, _qwen3_omni_rows)}


def share_audio_encoder_passes(model: torch.nn.Module) -> _SharedPasses:
    """Make `model`'s audio encoder run once per distinct clip of a batch; returns the pass counters.

    Works on Qwen2AudioForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration and
    Qwen3OmniMoeThinkerForConditionalGeneration (before or after PEFT wrapping); calling it twice is harmless. Other models: a ValueError naming the class.
    """
    towers = [m for m in model.modules() if type(m).__name__ in _TOWERS]
    if not towers:
        raise ValueError(f"share_audio_encoder_passes: no Qwen2-Audio or Qwen2.5-Omni audio encoder in {type(model).__name__}")
    existing = getattr(towers[0], "_audiothink_passes", None)
    if existing is not None:
        return existing
    stats = _SharedPasses()
    for tower in towers:
        _TOWERS[type(tower).__name__](tower, stats)
        tower._audiothink_passes = stats
    return stats


def freeze_audio_encoder(model: torch.nn.Module) -> tuple[int, int]:
    """Stop training `model`'s audio encoder: ``requires_grad=False`` on each of its parameters.

    The encoder is the architecture's audio tower: Qwen2-Audio's Whisper encoder (its
    ``multi_modal_projector``, outside the tower, keeps training) or the Omni thinker's audio encoder (its
    output projection ``proj`` is part of it and is frozen too). Returns (parameters frozen, parameters
    still trainable in the whole model). Other models: a ValueError naming the class.
    """
    towers = [m for m in model.modules() if type(m).__name__ in _TOWERS]
    if not towers:
        raise ValueError(
            f"freeze_audio_encoder: no Qwen2-Audio or Qwen2.5-Omni audio encoder in {type(model).__name__}"
        )
    frozen = 0
    for tower in towers:
        for p in tower.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen, sum(p.numel() for p in model.parameters() if p.requires_grad)


# Sub-models that an audio-and-text forward never calls: the Qwen2.5-Omni thinker's vision encoder.
_IDLE_IN_AUDIO_QA = ("visual", "vision_tower", "vision_model")


def freeze_idle_towers(model: torch.nn.Module) -> int:
    """``requires_grad=False`` on every parameter of the sub-models an audio question never runs (the thinkers'
    vision encoders); returns how many parameters that froze. Exact: they get no gradient anyway, so no weight
    changes. It keeps the optimizer from holding them without state, which FSDP2's sharded optimizer checkpoint
    cannot load back (torch's DCP asks for each trainable parameter's state: "Missing key in checkpoint
    state_dict: optimizer.state.model.visual....step"), and DDP needs no search for unused parameters."""
    frozen = 0
    for name, p in model.named_parameters():
        if set(name.split(".")) & set(_IDLE_IN_AUDIO_QA) and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def idle_trainable_parameters(model: torch.nn.Module) -> bool:
    """Whether a trainable parameter of `model` sits in a sub-model an audio question never uses.

    DDP needs ``find_unused_parameters=True`` for such a parameter (it gets no gradient); for any other model
    that flag only costs an extra pass over the autograd graph every step, and a warning from every process.
    """
    return any(p.requires_grad for name, p in model.named_parameters()
               if set(name.split(".")) & set(_IDLE_IN_AUDIO_QA))


# -- optional fused kernels for the update step ------------------------------------------------------------

# The language model's modules that Liger's Triton kernels replace, per model class: in eager PyTorch the
# RMSNorms (upcast to fp32, several passes), SwiGLU and RoPE are memory-bound chains of small kernels.
_LIGER_TARGETS = {
    "Qwen2AudioForConditionalGeneration": (
        "transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm", "Qwen2MLP", "apply_rotary_pos_emb"),
    "Qwen2_5OmniThinkerForConditionalGeneration": (
        "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni", "Qwen2_5OmniRMSNorm", "Qwen2MLP",
        "apply_rotary_pos_emb"),
}


def use_liger_kernels(model_cls: str) -> list[str]:
    """Make models of `model_cls` (dotted or bare class name) built from now on use Liger's fused RMSNorm,
    SwiGLU MLP and RoPE in their language model. Call before `from_pretrained`; returns what was patched.

    Same math, fewer memory passes: a faster update step and less activation memory. GPU only (Triton);
    needs the `liger` extra. The audio encoder is left alone. (TRL's own `use_liger_kernel` switch keys on
    the model type, and neither qwen2_audio nor qwen2_5_omni_thinker is one it knows.)
    """
    import importlib

    name = model_cls.rsplit(".", 1)[-1]
    if name not in _LIGER_TARGETS:
        raise ValueError(f"Liger kernels: no mapping for {name} (known: {', '.join(_LIGER_TARGETS)})")
    try:
        liger = importlib.import_module("liger_kernel.transformers")
    except ImportError as e:
        raise ImportError(
            "model.liger_kernels=true needs liger-kernel (and a CUDA GPU): pip install -e '.[liger]'"
        ) from e
    module_name, norm, mlp, rope = _LIGER_TARGETS[name]
    module = importlib.import_module(module_name)
    setattr(module, norm, liger.LigerRMSNorm)
    setattr(module, mlp, liger.LigerSwiGLUMLP)
    setattr(module, rope, liger.liger_rotary_pos_emb)
    patched = [f"{module_name}.{n}" for n in (norm, mlp, rope)]
    log.info("Liger kernels: %s", ", ".join(patched))
    return patched
