"""Audio loading for audiothink.

Every audio model we train expects 16 kHz mono float32, so all audio goes through
:func:`load_audio`. Errors are raised as :class:`AudioError` with the file path (and the
dataset row id when known) in the message, because a bare libsndfile error in the middle of
a training run does not tell you which of 50k files is broken.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

from audiothink.plumbing.errors import AudioError, ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio", "audio_info", "check_audio", "write_wav", "clip_audio_tokens",
           "min_audio_tokens", "min_clip_samples", "short_clip_problem", "LONG_AUDIO", "AudioWindow",
           "model_audio_window", "long_clips_message"]

SAMPLE_RATE = 16_000

# Extra input frames read past the clip point so the resampler's filter has real signal
# to look at near the cut instead of an artificial edge.
_RESAMPLE_MARGIN_SECONDS = 0.05

# Sample formats that can hold NaN or inf. Integer PCM (and FLAC, which is integer) cannot, so
# only files in these subtypes are decoded by check_audio.
_FLOAT_SUBTYPES = frozenset(("FLOAT", "DOUBLE"))
# Frames decoded at a time while scanning a float file for non-finite samples (bounded memory).
_SCAN_BLOCK_FRAMES = 1 << 20


# Audio tokens every clip must expand to, by the checkpoint's ``config.model_type`` (other models: 1, a clip that
# expands to no token trains without audio). Qwen2-Audio's forward (transformers' modeling_qwen2_audio.py) takes a
# batch in which no two <|AUDIO|> tokens are adjacent for unexpanded input and sends it down its legacy merge,
# which fails in generate ("'NoneType' object is not subscriptable"): a clip of one token is such a batch alone, and
# whether it is in a batch depends on its neighbours. Qwen2.5-Omni's thinker has no such path.
# tests/test_audio.py::test_min_clip_samples_is_the_models_real_boundary runs both models on each side.
_MIN_AUDIO_TOKENS = {"qwen2_audio": 2}


def min_audio_tokens(model_type: str | None) -> int:
    """Audio tokens every clip must expand to for a model of ``config.model_type``."""
    return _MIN_AUDIO_TOKENS.get(model_type or "", 1)


def _qwen3_omni_audio_tokens(mel_frames: int) -> int:
    # Qwen3-Omni's AuT encoder: 1 s chunks of 100 mel frames (n_window = 50, as published and as the processor
    # and vLLM's qwen3_omni_moe_thinker.py fix it), three stride-2 convolutions each: 13 tokens a full chunk
    chunk = 100
    rest = mel_frames % chunk
    for _ in range(3):
        rest = (rest - 1) // 2 + 1
    return rest + (mel_frames // chunk) * 13


# Audio placeholders per clip by ``config.model_type``, where the encoder is not Qwen2-Audio's (the full Qwen3-Omni
# checkpoint's config is ``qwen3_omni_moe``, a thinker saved alone ``qwen3_omni_moe_thinker``).
_AUDIO_TOKEN_RULES = {"qwen3_omni_moe": _qwen3_omni_audio_tokens, "qwen3_omni_moe_thinker": _qwen3_omni_audio_tokens}


def feat_extract_output_length(mel_frames: int, model_type: str | None = None) -> int:
    """Audio placeholders for a clip of ``mel_frames`` mel frames. Qwen2-Audio's and Qwen2.5-Omni's encoder
    (a stride-2 convolution, then 2x pooling; vLLM's ``_get_feat_extract_output_lengths`` in qwen2_audio.py,
    also used by qwen2_5_omni_thinker.py, and transformers' processors compute the same), or the rule of
    ``model_type`` (Qwen3-Omni: 13 a 1 s chunk, transformers' and vLLM's qwen3_omni_moe)."""
    rule = _AUDIO_TOKEN_RULES.get(model_type or "")
    if rule is not None:
        return rule(mel_frames)
    conv = (mel_frames - 1) // 2 + 1
    return (conv - 2) // 2 + 1


def clip_audio_tokens(samples: int, *, hop_length: int, window: int, model_type: str | None = None) -> int:
    """Audio tokens of a clip of ``samples`` (16 kHz), by the processor's rule: mel frames = ceil(samples / hop),
    the clip cut to the ``window`` (samples) first, then the encoder's downsampling
    (:func:`feat_extract_output_length` for ``model_type``)."""
    return feat_extract_output_length(math.ceil(min(samples, window) / hop_length), model_type)


def min_clip_samples(feature_extractor, model_type: str | None, max_seconds: float | None = None) -> int | None:
    """The shortest clip (samples at 16 kHz) the model can use: the first that expands to
    :func:`min_audio_tokens` audio tokens under the feature extractor's hop and window (or ``max_seconds``).
    None when no clip within the window does."""
    window = int(feature_extractor.n_samples)
    if max_seconds:
        window = min(window, int(round(max_seconds * SAMPLE_RATE)))
    hop = int(feature_extractor.hop_length)
    need = min_audio_tokens(model_type)
    for frames in range(1, window // hop + 2):
        samples = (frames - 1) * hop + 1  # the shortest clip with this many mel frames
        if samples > window:
            break
        if clip_audio_tokens(samples, hop_length=hop, window=window, model_type=model_type) >= need:
            return samples
    return None


def short_clip_problem(path: str | os.PathLike, seconds: float, min_samples: int, model_type: str | None = None,
                       row_id: str | None = None) -> str | None:
    """The message for a clip shorter than ``min_samples`` (:func:`min_clip_samples`), None when it is long
    enough. Its length is counted as the resampler makes it: ``round(seconds * 16000)``."""
    samples = int(round(seconds * SAMPLE_RATE))
    if samples >= min_samples:
        return None
    need = min_audio_tokens(model_type)
    why = (f"shorter clips expand to fewer than {need} audio tokens, which this model ({model_type}) takes for "
           "unexpanded input and fails on") if need > 1 else "shorter clips get no audio token"
    return str(_fail(path, f"audio too short: {1000 * seconds:.3g} ms ({samples} samples once resampled to the "
                           f"model's {SAMPLE_RATE} Hz); the model needs at least {min_samples} samples "
                           f"({1000 * min_samples / SAMPLE_RATE:.3g} ms): {why}", row_id))


def _fail(path: str | os.PathLike, reason: str, row_id: str | None) -> AudioError:
    where = f"audio {os.fspath(path)}"
    if row_id is not None:
        where += f" (id={row_id})"
    return AudioError(f"{where}: {reason}")


def _check_is_file(path: str | os.PathLike, row_id: str | None) -> None:
    # Checked up front so users see "missing" / "is a directory" rather than libsndfile's
    # generic "Error opening ...".
    p = Path(path)
    if not p.exists():
        raise _fail(path, "file not found", row_id)
    if p.is_dir():
        raise _fail(path, "is a directory, expected an audio file", row_id)
    if not p.is_file():
        # a named pipe, socket or device: opening it can block forever (a FIFO waits for a writer)
        raise _fail(path, "not a regular file (a pipe, socket or device), expected an audio file", row_id)


def _header(f: sf.SoundFile, path: str | os.PathLike, row_id: str | None) -> tuple[float, int, int]:
    """``(duration_seconds, sample_rate, channels)`` of an open file; zero-length audio is an error."""
    if f.frames <= 0 or f.samplerate <= 0:
        raise _fail(path, "audio has zero length", row_id)
    return f.frames / f.samplerate, int(f.samplerate), int(f.channels)


def audio_info(path: str | os.PathLike, row_id: str | None = None) -> tuple[float, int, int]:
    """Return ``(duration_seconds, sample_rate, channels)`` without decoding samples.

    Used to validate a whole dataset cheaply before training starts.
    """
    _check_is_file(path, row_id)
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            return _header(f, path, row_id)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise _fail(path, f"unreadable or corrupt audio ({exc})", row_id) from exc


def _frames_read(max_seconds: float | None, rate: int, total: int) -> int:
    """How many frames :func:`load_audio` decodes from a file of ``total`` frames at ``rate``."""
    if max_seconds is None:
        return total
    return min(total, math.ceil((max_seconds + _RESAMPLE_MARGIN_SECONDS) * rate))


def check_audio(
    path: str | os.PathLike, *, max_seconds: float | None = None, row_id: str | None = None
) -> tuple[float, int, int]:
    """Everything :func:`load_audio` would reject, found before training: ``(duration, rate, channels)``.

    Reads the header like :func:`audio_info` (missing file, directory, corrupt or empty audio) and,
    for float WAV/AIFF/CAF files (the only sample formats that can hold NaN or inf), also decodes
    the part :func:`load_audio` will read (the first ``max_seconds`` plus the resampling margin)
    and rejects non-finite samples. Integer PCM files are not decoded, so checking a large
    16-bit data set stays a header read per file.
    """
    _check_is_file(path, row_id)
    try:
        with sf.SoundFile(os.fspath(path)) as f:  # one open: the header, then (float files only) the samples
            duration, rate, channels = _header(f, path, row_id)
            if f.subtype not in _FLOAT_SUBTYPES:
                return duration, rate, channels
            todo = _frames_read(max_seconds, f.samplerate, f.frames)
            while todo > 0:
                block = f.read(frames=min(todo, _SCAN_BLOCK_FRAMES), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                if not np.isfinite(block).all():
                    raise _fail(path, "audio contains non-finite samples (NaN or inf)", row_id)
                todo -= block.shape[0]
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise _fail(path, f"unreadable or corrupt audio ({exc})", row_id) from exc
    return duration, rate, channels


def _read_frames(
    path: str | os.PathLike, max_seconds: float | None, row_id: str | None
) -> tuple[np.ndarray, int, int]:
    """Read the first ``max_seconds`` (plus a resampling margin) of ``path``.

    Returns ``(samples[frames, channels], file_rate, total_frames_in_file)``.
    """
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            total = f.frames
            n = _frames_read(max_seconds, f.samplerate, total)
            data = f.read(frames=n, dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise _fail(path, f"unreadable or corrupt audio ({exc})", row_id) from exc
    return data, int(rate), int(total)


def load_audio(
    path: str | os.PathLike,
    *,
    max_seconds: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    row_id: str | None = None,
) -> tuple[np.ndarray, bool]:
    """Load ``path`` as mono float32 at ``sample_rate``, keeping at most ``max_seconds``.

    Returns ``(wave, was_clipped)``. Long files are clipped rather than rejected because the
    encoder window is a model property, not a data error; the flag lets callers count how
    often that happens. Only the needed prefix is decoded, so clipping a long file is cheap.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    _check_is_file(path, row_id)

    max_out = None if max_seconds is None else int(round(max_seconds * sample_rate))
    data, file_rate, total = _read_frames(path, max_seconds, row_id)
    if total == 0 or data.shape[0] == 0:
        raise _fail(path, "audio has zero length", row_id)
    if not np.isfinite(data).all():
        raise _fail(path, "audio contains non-finite samples (NaN or inf)", row_id)

    wave = data.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)

    truncated_read = data.shape[0] < total
    was_clipped = False
    if max_out is not None and (truncated_read or wave.shape[0] > max_out):
        wave = wave[:max_out]
        was_clipped = True
    return np.ascontiguousarray(wave, dtype=np.float32), was_clipped


def write_wav(
    path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, *, subtype: str = "PCM_16"
) -> None:
    """Write ``wave`` as mono WAV (16-bit PCM by default), creating parent directories.

    PCM16 keeps files small and is readable by every toolchain; samples are clipped to
    [-1, 1] so a slightly hot signal saturates instead of wrapping around. ``subtype="FLOAT"``
    writes the samples unchanged (no clipping, NaN kept), for audio that must round-trip exactly.
    """
    arr = np.asarray(wave, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"write_wav expects a 1-D mono wave, got shape {arr.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if subtype.startswith("PCM"):
        arr = np.clip(arr, -1.0, 1.0)
    sf.write(os.fspath(path), arr, sample_rate, subtype=subtype, format="WAV")


def shortest_clip(feature_extractor, model_type: str | None, max_audio_seconds: float | None) -> int:
    """:func:`audiothink.audio.min_clip_samples`, or a ConfigError when the window is shorter than that."""
    min_samples = min_clip_samples(feature_extractor, model_type, max_audio_seconds)
    if min_samples is None:
        raise ConfigError(f"model.max_audio_seconds={max_audio_seconds}: no clip this short can give the model "
                          f"({model_type}) the audio tokens it needs; raise it")
    return min_samples


def short_clip_check(model_cfg: DictConfig, window: AudioWindow | None = None):
    """``(path, seconds, row_id) -> message or None``: the model's shortest-clip rule
    (:func:`audiothink.audio.min_clip_samples`), read from its processor and config.json (no weights), for a
    check before the model loads; ``window``: the model's :func:`model_audio_window`, when already read.
    Training's rows get it through :func:`row_checks`; evaluation calls this."""
    window = window or model_audio_window(model_cfg)
    return lambda path, clip_seconds, row_id=None: short_clip_problem(path, clip_seconds, window.min_samples,
                                                                      window.model_type, row_id)


# What a clip longer than the model's audio window becomes (data.long_audio): split into consecutive window-long
# clips of the same prompt (chunk), cut to the window (truncate, counted and warned), or refused before the model
# loads (error). The default, truncate, is what the model's processor does and what published benchmark numbers
# measured (Qwen2-Audio's evaluation cuts at 30 s); chunk changes the prompt (a 95 s clip is 4 clips, 4 x 750 audio
# tokens) and is the user's choice.
LONG_AUDIO = ("chunk", "truncate", "error")


@dataclass(frozen=True)
class AudioWindow:
    """The model's audio window and what a longer clip becomes: the one rule that decides the clips a file is given
    to the model as. Training's rollouts (``AudioGRPOTrainer``), evaluation and the held-out scoring
    (``audiothink.inference.build_inputs``), SFT, the row checks (prompt length, ``data.long_audio=error``), the
    benchmark's audio check and so the vLLM rows (the trainer's clips) all call :meth:`pieces` / :meth:`load`.

    ``samples``: the window at 16 kHz, the feature extractor's ``n_samples`` or ``model.max_audio_seconds`` if
    shorter (the processor cuts every clip to ``n_samples``). ``long_audio``: one of :data:`LONG_AUDIO`.
    ``min_samples``: the shortest clip the model can take (:func:`min_clip_samples`), which a chunked clip's last
    piece is held to; ``model_type``: the checkpoint's, for messages.
    """

    samples: int
    long_audio: str = "truncate"
    min_samples: int = 1
    model_type: str | None = None

    def __post_init__(self):
        if self.long_audio not in LONG_AUDIO:
            raise ConfigError(f"data.long_audio={self.long_audio!r}: must be chunk, truncate or error")
        if not 1 <= self.min_samples <= self.samples:
            raise ValueError(f"min_samples={self.min_samples} must be in [1, window={self.samples}]")

    @classmethod
    def of(cls, feature_extractor, model_type: str | None, max_audio_seconds: float | None,
           long_audio: str = "truncate") -> AudioWindow:
        """The window of a model from its feature extractor (``n_samples``, ``hop_length``), ``config.model_type``
        and ``model.max_audio_seconds``; a :class:`ConfigError` when no clip fits it (:func:`shortest_clip`)."""
        window = int(feature_extractor.n_samples)
        if max_audio_seconds:
            window = min(window, int(round(max_audio_seconds * SAMPLE_RATE)))
        return cls(window, long_audio, shortest_clip(feature_extractor, model_type, max_audio_seconds), model_type)

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def too_long(self, seconds: float) -> bool:
        """Whether a clip of ``seconds`` (counted as the resampler makes it, ``round(seconds * 16000)``) is longer
        than the window."""
        return int(round(seconds * SAMPLE_RATE)) > self.samples

    def pieces(self, samples: int) -> list[tuple[int, int]]:
        """``(start, end)`` sample ranges of the clips the model is given for a clip of ``samples`` (16 kHz).

        Within the window, or under truncate / error: one, ``(0, min(samples, window))``. Under chunk: consecutive
        window-long pieces, the last one shorter; a last piece under ``min_samples`` (it would expand to fewer
        audio tokens than the model takes: no audio, or Qwen2-Audio's failing merge) is instead the clip's last
        ``min_samples``, repeating at most that much (60 ms for Qwen2-Audio) of the piece before it, so nothing
        of the clip is lost and every piece is usable. So a clip gives ``ceil(samples / window)`` pieces.
        """
        w = self.samples
        if self.long_audio != "chunk" or samples <= w:
            return [(0, min(samples, w))]
        bounds = [(start, min(start + w, samples)) for start in range(0, samples, w)]
        start, end = bounds[-1]
        if end - start < self.min_samples:
            bounds[-1] = (end - self.min_samples, end)
        return bounds

    def count(self, seconds: float) -> int:
        """Clips the model is given for a clip of ``seconds`` (what the row checks count a prompt's clips by)."""
        return len(self.pieces(int(round(seconds * SAMPLE_RATE))))

    def problem(self, path: str | os.PathLike, seconds: float, row_id: str | None = None) -> str | None:
        """Under ``long_audio=error``, the message for a clip longer than the window (it names the file); None for
        any other clip or mode."""
        if self.long_audio != "error" or not self.too_long(seconds):
            return None
        chunks = len(AudioWindow(self.samples, "chunk", self.min_samples).pieces(int(round(seconds * SAMPLE_RATE))))
        return str(_fail(path, f"{seconds:.4g} s, longer than the model's audio window of {self.seconds:.4g} s "
                               f"(data.long_audio=error; chunk gives it as {chunks} clips, truncate keeps its first "
                               f"{self.seconds:.4g} s)", row_id))

    def load(self, path: str | os.PathLike, row_id: str | None = None) -> tuple[list[np.ndarray], bool]:
        """The clips the model is given for ``path`` (mono float32 at 16 kHz, :meth:`pieces` of it) and whether
        audio was cut off (truncate: the clip was longer than the window). Under error a longer clip is an
        :class:`AudioError` (the pre-load checks refuse it first; here, the file changed since)."""
        if self.long_audio != "chunk":
            wave, clipped = load_audio(path, max_seconds=self.seconds, row_id=row_id)
            if clipped and self.long_audio == "error":
                seconds = audio_info(path, row_id)[0]
                raise AudioError(self.problem(path, seconds, row_id) or f"audio {os.fspath(path)}: longer than "
                                 f"the model's audio window of {self.seconds:.4g} s (data.long_audio=error)")
            return [wave], clipped
        wave, _ = load_audio(path, row_id=row_id)
        return [wave[a:b] for a, b in self.pieces(wave.shape[0])], False


def long_clips_message(n: int, seconds: float, long_audio: str) -> str:
    """What happens to ``n`` clips longer than the model's window of ``seconds`` under ``data.long_audio``, in one
    sentence (training's data log and evaluation say it alike)."""
    one = n == 1
    clips = "1 clip is" if one else f"{n} clips are"
    if long_audio == "chunk":
        return (f"{clips} longer than the model's audio window of {seconds:.4g} s and {'is' if one else 'are'} split "
                f"into clips of {seconds:.4g} s (data.long_audio=chunk)")
    return (f"{clips} longer than the model's audio window of {seconds:.4g} s and {'is' if one else 'are'} cut to "
            f"{'its' if one else 'their'} first {seconds:.4g} s (data.long_audio=truncate; chunk hears all of "
            f"{'it' if one else 'them'}, error stops)")


def model_audio_window(model_cfg: DictConfig, long_audio: str = "truncate") -> AudioWindow:
    """The :class:`AudioWindow` of ``model.*`` (its processor and config.json, no weights), for checks before the
    model loads."""
    from audiothink.loading import load_model_config, load_processor

    processor, model_type = load_processor(model_cfg), load_model_config(model_cfg).model_type
    return AudioWindow.of(processor.feature_extractor, model_type, model_cfg.get("max_audio_seconds"), long_audio)
