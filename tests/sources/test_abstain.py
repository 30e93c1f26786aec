"""audiothink.sources.abstain: abstention items (an exact share, noise in place of every clip, bad settings), scored
like any choice."""

from __future__ import annotations

import numpy as np
import pytest

from audiothink.audio import SAMPLE_RATE, audio_info, load_audio, write_wav
from audiothink.data import DataError, Sample
from audiothink.sources.abstain import DEFAULT_LABEL, add_abstention


def _samples(tmp_path, n: int = 20) -> list[Sample]:
    out = []
    for i in range(n):
        clips = [tmp_path / f"c{i}-{k}.wav" for k in range(1 + (i % 3 == 0))]
        for k, clip in enumerate(clips):
            write_wav(clip, np.full(int(0.1 * (i + 1 + k) * SAMPLE_RATE), 0.3, np.float32))
        out.append(Sample(id=f"s{i}", audio=tuple(map(str, clips)), question="q?", choices=("a", "b", "c"),
                          answer="b", task="t"))
    return out


def test_abstention_picks_exact_share_deterministically(tmp_path):
    samples = _samples(tmp_path)
    out, n = add_abstention(samples, share=0.25, seed=3, cache_dir=tmp_path / "noise")
    assert n == 5
    picked = [s for s in out if s.extra.get("abstain")]
    assert len(picked) == 5 and all(s.answer == DEFAULT_LABEL for s in picked)
    # the label is a choice of every item, so its presence gives nothing away; real items keep their answer
    assert all(s.choices == ("a", "b", "c", DEFAULT_LABEL) for s in out)
    assert all(s.answer == "b" for s in out if not s.extra.get("abstain"))
    # same seed: same items and noise, whatever the order; another seed: other items
    again, _ = add_abstention(list(reversed(samples)), share=0.25, seed=3, cache_dir=tmp_path / "noise2")
    assert {s.id for s in again if s.extra.get("abstain")} == {s.id for s in picked}
    first = next(s for s in picked)
    twin = next(s for s in again if s.id == first.id)
    np.testing.assert_array_equal(load_audio(first.audio[0])[0], load_audio(twin.audio[0])[0])
    other, _ = add_abstention(samples, share=0.25, seed=4, cache_dir=tmp_path / "noise")
    assert {s.id for s in other if s.extra.get("abstain")} != {s.id for s in picked}


def test_abstention_noise_replaces_every_clip_at_its_length(tmp_path):
    samples = _samples(tmp_path)
    out, _ = add_abstention(samples, share=1.0, seed=0, cache_dir=tmp_path / "noise", max_seconds=1.0)
    for before, after in zip(samples, out):
        assert after.extra["original_audio"] == list(before.audio) and after.extra["original_answer"] == "b"
        assert len(after.audio) == len(before.audio)
        for old, new in zip(before.audio, after.audio):
            assert audio_info(new)[0] == pytest.approx(min(audio_info(old)[0], 1.0), abs=1e-3)
            wave, _ = load_audio(new)
            assert 0.005 < float(np.sqrt(np.mean(wave**2))) < 0.12  # noise, not the 0.3 tone
            assert abs(float(wave.mean())) < 0.05


def test_abstention_off_and_bad_settings(tmp_path):
    samples = _samples(tmp_path, 4)
    assert add_abstention(samples, share=0.0, seed=0, cache_dir=tmp_path) == (samples, 0)
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\]"):
        add_abstention(samples, share=1.5, seed=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="noise_rms"):
        add_abstention(samples, share=0.5, seed=0, cache_dir=tmp_path, noise_rms=(0.2, 0.1))
    labelled = [Sample(id="x", audio=samples[0].audio, question="q", choices=("a", "unknown"), answer="a")]
    (s,), n = add_abstention(labelled, share=1.0, seed=0, cache_dir=tmp_path, label="unknown")
    assert n == 1 and s.choices == ("a", "unknown") and s.answer == "unknown"  # an existing choice is reused
    crowded = [Sample(id="y", audio=samples[0].audio, question="q", choices=tuple("abcdefghijklmnopqrstuvwxyz"),
                      answer="a")]
    with pytest.raises(DataError, match="no room for the abstention choice"):
        add_abstention(crowded, share=0.5, seed=0, cache_dir=tmp_path)


def test_accuracy_reward_scores_the_abstention_target_like_any_choice(tmp_path):
    from audiothink.rewards.accuracy import is_correct

    choices = ["rain", "wind", "thunder", DEFAULT_LABEL]
    for said in (f"<answer>{DEFAULT_LABEL}</answer>", "<answer>(D) cannot be determined from the audio</answer>",
                 "<think>only noise</think><answer>It cannot be determined from the audio.</answer>"):
        assert is_correct(said, DEFAULT_LABEL, choices) is True, said
    for said in ("<answer>(D)</answer>", "<answer>D</answer>"):  # letters: right only when opted in
        assert is_correct(said, DEFAULT_LABEL, choices) is False, said
        assert is_correct(said, DEFAULT_LABEL, choices, letters=True) is True, said
    assert is_correct("<answer>wind</answer>", DEFAULT_LABEL, choices) is False
    assert is_correct(f"<answer>{DEFAULT_LABEL}</answer>", "wind", choices) is False  # abstaining on real audio
