"""audiothink.sources.hf: the Hugging Face reader (a DatasetDict on disk, parquet splits, decoded arrays and paths,
custom field names)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from audiothink.audio import audio_info, load_audio, write_wav
from audiothink.data import DataError
from audiothink.sources.hf import load_hf
from audiothink.sources.mapping import FieldMap
from tests.helpers import audio_dataset, hf_rows, wav_bytes


def test_hf_dataset_dict_on_disk(tmp_path, caplog):
    import datasets

    datasets.DatasetDict({"train": audio_dataset(hf_rows(3)), "test": audio_dataset(hf_rows(1))}).save_to_disk(
        str(tmp_path / "ds"))
    with caplog.at_level(logging.INFO, logger="audiothink.sources.hf"):
        result = load_hf(tmp_path / "ds", split="train", cache_dir=tmp_path / "cache",
                         question_rewrite={"video": "audio"})
    assert [s.id for s in result.samples] == ["r0", "r1", "r2"]
    assert [s.answer for s in result.samples] == ["rain", "wind", "rain"]  # integer answers are indices
    assert result.samples[0].question == "which sound is in the audio?"
    for i, s in enumerate(result.samples):
        assert Path(s.audio[0]).is_relative_to(tmp_path / "cache")
        assert audio_info(s.audio[0])[0] == pytest.approx(0.1 * (i + 1))
    assert result.counts == {"questions_rewritten": 3, "audio_files_written": 3, "audio_files_reused": 0}
    assert "3 in-memory clips" in caplog.text and "3 written now, 0 reused" in caplog.text

    again = load_hf(tmp_path / "ds", split="train", cache_dir=tmp_path / "cache")
    assert again.counts["audio_files_written"] == 0 and again.counts["audio_files_reused"] == 3
    assert [s.audio for s in again.samples] == [s.audio for s in result.samples]
    assert [s.id for s in load_hf(tmp_path / "ds", split="test", cache_dir=tmp_path / "cache").samples] == ["r0"]
    with pytest.raises(DataError, match=r"no split 'dev'; the splits are \['test', 'train'\]"):
        load_hf(tmp_path / "ds", split="dev", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="choose one"):
        load_hf(tmp_path / "ds", cache_dir=tmp_path / "cache")


def test_hf_multi_audio_rows_and_parquet_splits(tmp_path):
    rows = [{**r, "audio": [r["audio"], {"bytes": wav_bytes(0.5), "path": "second.flac"}]} for r in hf_rows(2)]
    ds = audio_dataset(rows, multi=True)
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    audio_dataset(hf_rows(1)).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    result = load_hf(tmp_path, split="train", cache_dir=tmp_path / "cache")
    assert [len(s.audio) for s in result.samples] == [2, 2]
    assert all(p.endswith(".wav") for s in result.samples for p in s.audio)  # named by content, not by "path"
    assert audio_info(result.samples[1].audio[1])[0] == pytest.approx(0.5)
    assert len(load_hf(tmp_path, split="test", cache_dir=tmp_path / "cache").samples) == 1
    # a folder holding only a train file does not serve it as the test split
    only = tmp_path / "only"
    only.mkdir()
    os.replace(tmp_path / "data" / "train-00000-of-00001.parquet", only / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="no parquet file names split 'test'"):
        load_hf(only, split="test", cache_dir=tmp_path / "cache")
    assert len(load_hf(only, split="train", cache_dir=tmp_path / "cache").samples) == 2


def test_hf_decoded_arrays_and_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_wav(tmp_path / "clips" / "p.wav", np.full(800, 0.2, np.float32))
    t = np.arange(4800) / 48_000
    stereo = [(0.4 * np.sin(2 * np.pi * 440 * t)).tolist(), (0.2 * np.sin(2 * np.pi * 440 * t)).tolist()]
    rows = [
        {"id": 1, "audio": {"array": [[0.25] * 800], "sampling_rate": 8000}, "answer": "b"},  # 8 kHz, 1 channel
        {"id": 2, "audio": {"array": stereo, "sampling_rate": 48_000}, "answer": "a"},  # (channels, samples)
    ]
    common = {"question": "q", "choices": ["a", "b"]}
    pq.write_table(pa.Table.from_pylist([{**r, **common} for r in rows]), tmp_path / "arrays.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": 3, "audio": "clips/p.wav", "answer": "a", **common}]),
                   tmp_path / "paths.parquet")

    a, b = load_hf(tmp_path / "arrays.parquet", cache_dir=tmp_path / "cache").samples
    assert (a.id, b.id) == ("1", "2")
    wave, _ = load_audio(a.audio[0])
    assert wave.shape == (1600,) and wave[100:-100] == pytest.approx(0.25, abs=1e-3)  # 8 kHz -> 16 kHz
    wave, _ = load_audio(b.audio[0])
    assert wave.shape == (1600,) and np.abs(wave).max() == pytest.approx(0.3, abs=0.01)  # mono mean of 0.4, 0.2
    (c,) = load_hf(tmp_path / "paths.parquet", cache_dir=tmp_path / "cache").samples
    assert c.audio == (str(tmp_path / "clips" / "p.wav"),)  # relative to the dataset's folder


def test_hf_custom_field_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_wav(tmp_path / "x.wav", np.full(800, 0.2, np.float32))
    pq.write_table(pa.Table.from_pylist([{"uid": "u1", "wav": "x.wav", "prompt": "q", "options": ["a", "b"],
                                          "label": 1, "domain": "music"}]), tmp_path / "t.parquet")
    fields = FieldMap.from_config({"id": "uid", "audio": "wav", "question": "prompt", "choices": "options",
                                   "answer": "label", "task": "domain"})
    (s,) = load_hf(tmp_path / "t.parquet", cache_dir=tmp_path / "c", fields=fields).samples
    assert (s.id, s.answer, s.task, s.choices) == ("u1", "b", "music", ("a", "b"))
    wrong = FieldMap.from_config({"id": "uid", "audio": "wav", "question": "prompt", "answer": "label",
                                  "choices": "opts"})
    with pytest.raises(DataError) as info:
        load_hf(tmp_path / "t.parquet", cache_dir=tmp_path / "c", fields=wrong)
    assert str(info.value).splitlines()[1:] == [
        f"{tmp_path / 't.parquet'}:0 id=u1: label: index 1 cannot be resolved: opts is not a list",
        f"{tmp_path / 't.parquet'}:0 id=u1: opts: missing",
    ]
