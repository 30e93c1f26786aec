"""Training data paths that are not there name the setting that produced them (data.train, data.eval,
data.root, data.audio_root, an environment variable), and the hf reader names a split only where the split
chose the rows."""

from __future__ import annotations

import json
import logging

import pytest

from audiothink.data import DataError
from audiothink.sources import load_split
from tests.helpers import audio_dataset, data_cfg, hf_rows


def test_a_missing_training_file_names_data_train_and_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AVQA_ROOT", raising=False)
    with pytest.raises(DataError) as e:
        load_split(data_cfg("avqa"), "train", max_seconds=None)
    assert str(e.value) == ("data/avqa/train_qa.data: metadata file not found (set by data.train = "
                            "${.root}/train_qa.data, data.root = data/avqa (the default: AVQA_ROOT is not set))")
    monkeypatch.setenv("AVQA_ROOT", str(tmp_path / "avqa"))
    with pytest.raises(DataError, match=r"data.root = .*avqa \(from AVQA_ROOT\)\)$"):
        load_split(data_cfg("avqa"), "train", max_seconds=None)


def test_a_missing_held_out_file_or_dataset_names_data_eval(tmp_path):
    cfg = data_cfg("jsonl", train=str(tmp_path / "t.jsonl"), eval=str(tmp_path / "e.jsonl"))
    with pytest.raises(DataError, match=rf"^{tmp_path}/e.jsonl: metadata file not found \(set by data.eval = "
                                        rf"{tmp_path}/e.jsonl\)$"):
        load_split(cfg, "eval", max_seconds=None)
    cfg = data_cfg("hf", train=str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds: dataset not found \(set by data.train = .*ds\)$"):
        load_split(cfg, "train", max_seconds=None)


def test_a_missing_audio_root_is_named(tmp_path):
    meta = tmp_path / "t.jsonl"
    meta.write_text(json.dumps({"id": "a", "audio": "clips/a.wav", "question": "q?", "choices": ["x", "y"],
                                "answer": "x"}) + "\n")
    cfg = data_cfg("jsonl", train=str(meta), audio_root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        load_split(cfg, "train", max_seconds=None)
    assert "file not found" in str(e.value)  # the row's own problem, as before
    assert str(e.value).endswith(f"(relative audio paths are joined onto data.audio_root, which is not a folder: "
                                 f"data.audio_root = {tmp_path / 'nowhere'})")


def test_a_parquet_file_named_directly_is_not_called_a_split(tmp_path, caplog):
    """The example: data=hf logged a file named test_mini-….parquet as "(split train)"."""
    from audiothink.sources.hf import load_hf

    (tmp_path / "data").mkdir()
    file = tmp_path / "test_mini-00000-of-00001.parquet"
    audio_dataset(hf_rows(2)).to_parquet(str(file))
    with caplog.at_level(logging.INFO, logger="audiothink.sources.hf"):
        load_hf(file, split="train", cache_dir=tmp_path / "c")
    assert f"in-memory clips of {file} are audio files" in caplog.text and "(split" not in caplog.text
    caplog.clear()
    audio_dataset(hf_rows(2)).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    with caplog.at_level(logging.INFO, logger="audiothink.sources.hf"):
        load_hf(tmp_path / "data", split="train", cache_dir=tmp_path / "c")
    assert f"in-memory clips of {tmp_path / 'data'} (split train) are audio files" in caplog.text
