"""Tests for audiothink.audio: resampling, mixing, clipping and the AudioError cases."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from audiothink.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, write_wav


def _sine(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum)) * rate / len(wave)


def test_48k_stereo_becomes_16k_mono(tmp_path):
    left, right = _sine(1.5, 48_000, 440.0), _sine(1.5, 48_000, 440.0) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 48_000, subtype="FLOAT")

    wave, clipped = load_audio(path)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape == (int(1.5 * SAMPLE_RATE),)
    assert not clipped
    # Mean of the channels: amplitude 0.5 and 0.25 -> 0.375, pitch unchanged.
    assert abs(_dominant_freq(wave, SAMPLE_RATE) - 440.0) < 2.0
    assert np.max(np.abs(wave[1000:-1000])) == pytest.approx(0.375, abs=0.01)


def test_8k_is_upsampled_to_16k(tmp_path):
    path = tmp_path / "low.wav"
    sf.write(path, _sine(0.5, 8_000, 300.0), 8_000)

    wave, clipped = load_audio(path)

    assert wave.shape == (8_000,)
    assert not clipped
    assert abs(_dominant_freq(wave, SAMPLE_RATE) - 300.0) < 3.0


def test_custom_sample_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _sine(1.0, 16_000), 16_000)
    wave, _ = load_audio(path, sample_rate=24_000)
    assert wave.shape == (24_000,)


def test_long_file_is_clipped_to_exact_length(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _sine(5.0, 44_100), 44_100)

    wave, clipped = load_audio(path, max_seconds=2.0)

    assert clipped
    assert wave.shape == (2 * SAMPLE_RATE,)
    # The clip must be the start of the file, not a resampled squeeze of all of it.
    assert abs(_dominant_freq(wave, SAMPLE_RATE) - 440.0) < 2.0


def test_file_exactly_max_seconds_is_not_clipped(tmp_path):
    path = tmp_path / "exact.wav"
    sf.write(path, _sine(2.0, 44_100), 44_100)
    wave, clipped = load_audio(path, max_seconds=2.0)
    assert not clipped
    assert wave.shape == (2 * SAMPLE_RATE,)


def test_short_file_under_max_seconds_is_untouched(tmp_path):
    path = tmp_path / "short.wav"
    original = _sine(0.5, SAMPLE_RATE)
    sf.write(path, original, SAMPLE_RATE, subtype="FLOAT")
    wave, clipped = load_audio(path, max_seconds=2.0)
    assert not clipped
    np.testing.assert_array_equal(wave, original)


def test_invalid_max_seconds(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, _sine(0.1, SAMPLE_RATE))
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(path, max_seconds=0)


# --------------------------------------------------------------------------- error cases


def _missing(tmp_path):
    return tmp_path / "nope.wav"


def _directory(tmp_path):
    d = tmp_path / "adir.wav"
    d.mkdir()
    return d


def _corrupt(tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio" + bytes(range(256)))
    return p


def _zero_length(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    return p


def _nan(tmp_path):
    p = tmp_path / "nan.wav"
    data = _sine(0.2, SAMPLE_RATE)
    data[100] = np.nan
    sf.write(p, data, SAMPLE_RATE, subtype="FLOAT")
    return p


def _inf(tmp_path):
    p = tmp_path / "inf.wav"
    data = _sine(0.2, SAMPLE_RATE)
    data[5] = np.inf
    sf.write(p, data, SAMPLE_RATE, subtype="FLOAT")
    return p


LOAD_ERRORS = [
    (_missing, "not found"),
    (_directory, "directory"),
    (_corrupt, "corrupt"),
    (_zero_length, "zero length"),
    (_nan, "non-finite"),
    (_inf, "non-finite"),
]


@pytest.mark.parametrize("make, reason", LOAD_ERRORS, ids=[m.__name__.strip("_") for m, _ in LOAD_ERRORS])
def test_load_audio_errors_name_path_and_row(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path, row_id="row-42")
    message = str(info.value)
    assert str(path) in message
    assert "row-42" in message
    assert reason in message


def test_load_audio_error_without_row_id(tmp_path):
    path = _missing(tmp_path)
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert "id=" not in str(info.value)


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)


@pytest.mark.parametrize(
    "make, reason",
    [(_missing, "not found"), (_directory, "directory"), (_corrupt, "corrupt"), (_zero_length, "zero length")],
    ids=["missing", "directory", "corrupt", "zero_length"],
)
def test_audio_info_errors(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as info:
        audio_info(path, row_id="r7")
    assert str(path) in str(info.value) and "r7" in str(info.value)


def test_audio_info_reports_duration_rate_channels(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, np.zeros((22_050, 2), dtype=np.float32), 44_100)
    assert audio_info(path) == (0.5, 44_100, 2)


def test_write_wav_roundtrip_creates_dirs(tmp_path):
    path = tmp_path / "deep" / "er" / "x.wav"
    wave = _sine(0.25, SAMPLE_RATE)
    write_wav(path, wave)

    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "WAV")
    back, clipped = load_audio(path)
    assert not clipped
    np.testing.assert_allclose(back, wave, atol=1 / 2**15 + 1e-6)


def test_write_wav_saturates_instead_of_wrapping(tmp_path):
    path = tmp_path / "hot.wav"
    write_wav(path, np.array([2.0, -3.0, 0.5], dtype=np.float32))
    back, _ = load_audio(path)
    assert back[0] > 0.99 and back[1] < -0.99


def test_write_wav_rejects_multichannel(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        write_wav(tmp_path / "x.wav", np.zeros((10, 2)))


# --------------------------------------------------------------------------- check_audio (load-time validation)


def test_check_audio_finds_nan_inf_and_header_problems(tmp_path):
    from audiothink.audio import check_audio

    for make, reason in LOAD_ERRORS:
        with pytest.raises(AudioError, match=reason):
            check_audio(make(tmp_path), row_id="r1")
    ok = tmp_path / "ok.wav"
    sf.write(ok, np.zeros((4_800, 2), dtype=np.float32), 48_000, subtype="FLOAT")
    assert check_audio(ok) == (0.1, 48_000, 2)


def test_check_audio_scans_only_what_load_audio_reads(tmp_path):
    from audiothink.audio import check_audio

    path = tmp_path / "late_nan.wav"
    data = _sine(3.0, SAMPLE_RATE)
    data[-10] = np.nan  # after a 1 s window (and its resampling margin)
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")
    assert check_audio(path, max_seconds=1.0)[0] == pytest.approx(3.0)
    assert load_audio(path, max_seconds=1.0)[1] is True  # the clip the trainer gets is finite
    with pytest.raises(AudioError, match="non-finite"):
        check_audio(path)


def test_check_audio_does_not_decode_integer_pcm(tmp_path, monkeypatch):
    from audiothink import audio

    path = tmp_path / "pcm.wav"
    write_wav(path, _sine(0.5, SAMPLE_RATE))
    monkeypatch.setattr(audio.sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded a PCM file"))
    assert audio.check_audio(path) == (0.5, SAMPLE_RATE, 1)


def test_write_wav_float_keeps_samples(tmp_path):
    wave = np.array([1.5, -0.25, np.nan], dtype=np.float32)
    write_wav(tmp_path / "f.wav", wave, subtype="FLOAT")
    back, _ = sf.read(tmp_path / "f.wav", dtype="float32")
    np.testing.assert_array_equal(back, wave)
