"""data.exclude: a list of ids (python -m audiothink.curate writes one) that training leaves out. Exactly the listed
ids go, counted per task; ids not in the data are a warning, a list of another data set or of every row an error,
and a path that is not a list stops training before the processor or the model loads."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from audiothink.audio import write_wav
from audiothink.data import DataError
from audiothink.plumbing.errors import ConfigError
from tests.helpers import CONFIGS, data_cfg


def _tiny_set(tmp_path):
    rows = []
    for i, task in enumerate(("a", "a", "b", "b", "b")):
        write_wav(tmp_path / f"c{i}.wav", np.full(8000, 0.1, np.float32))
        rows.append({"id": f"r{i}", "audio": f"c{i}.wav", "question": "which?", "choices": ["x", "y"],
                     "answer": "x", "task": task})
    meta = tmp_path / "train.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return meta


def test_exclude_drops_exactly_the_listed_ids(tmp_path, caplog):
    from audiothink.sources import load_training_data

    meta = _tiny_set(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("# a header line\nr1\n\n  r3 \nr1\nnot-there\n")
    with caplog.at_level(logging.INFO, logger="audiothink"):
        kept, _ = load_training_data(data_cfg("jsonl", train=str(meta), exclude=str(ids)), max_audio_seconds=None)
    assert [s.id for s in kept] == ["r0", "r2", "r4"]
    assert f"data.exclude={ids} dropped 2 of 5 rows (a 1, b 1); 3 left" in caplog.text
    assert "lists 1 id(s) that are not training ids (ignored): not-there" in caplog.text
    kept, _ = load_training_data(data_cfg("jsonl", train=str(meta)), max_audio_seconds=None)  # null: all rows
    assert len(kept) == 5


def test_an_exclude_list_of_another_data_set_or_of_every_row_is_an_error(tmp_path):
    from audiothink.sources import load_training_data

    meta = _tiny_set(tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("z1\nz2\n")
    with pytest.raises(DataError, match="none of its 2 ids is a training id .*another data set"):
        load_training_data(data_cfg("jsonl", train=str(meta), exclude=str(other)), max_audio_seconds=None)
    every = tmp_path / "every.txt"
    every.write_text("".join(f"r{i}\n" for i in range(5)))
    with pytest.raises(DataError, match="drops every one of the 5 training rows"):
        load_training_data(data_cfg("jsonl", train=str(meta), exclude=str(every)), max_audio_seconds=None)


def test_a_wrong_exclude_path_stops_training_before_the_model_loads(tmp_path, monkeypatch):
    import audiothink.train as train_mod  # registers the run folder's resolvers

    def loaded(*a, **k):
        raise AssertionError("the processor or model was loaded")

    monkeypatch.setattr(train_mod, "check_model_path", loaded)
    monkeypatch.setattr(train_mod, "load_processor", loaded)
    from hydra import compose, initialize_config_dir

    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "text_answerable.txt").write_text("r1\n")
    for path, match in ((tmp_path / "nope.txt", "no such file"),
                        (tmp_path / "folder", "is a folder, not an id list; the list curate writes is .*folder/"
                                              "text_answerable.txt")):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=[f"output_dir={tmp_path / 'run'}", f"data.exclude={path}"])
        with pytest.raises(ConfigError, match=f"^data.exclude={path}: {match}"):
            train_mod.train(cfg)


