"""audiothink.sources (build_dataset): the training data set from the data config, with skips, clipping and
abstention; config errors. Each reader's own tests: tests/sources/test_<reader>.py."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from audiothink.audio import SAMPLE_RATE, write_wav
from audiothink.data import DataError
from audiothink.sources.abstain import DEFAULT_LABEL
from tests.helpers import R1AQA_ROW, audio_dataset, data_cfg, hf_rows


def test_build_dataset_avqa_with_skips_clipping_and_abstention(tmp_path, caplog):
    from audiothink.sources import build_dataset

    audio = tmp_path / "audio"
    write_wav(audio / "long_1.wav", np.full(int(3.0 * SAMPLE_RATE), 0.1, np.float32))
    write_wav(audio / "short_2.wav", np.full(int(0.5 * SAMPLE_RATE), 0.1, np.float32))
    rows = [{**R1AQA_ROW, "id": 1, "audio_path": "/x/long_1.wav"},
            {**R1AQA_ROW, "id": 2, "audio_path": "/x/short_2.wav"},
            {**R1AQA_ROW, "id": 3, "audio_path": "/x/dead_3.wav"}]  # a dead source video: no audio
    (tmp_path / "train_qa.data").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = data_cfg("avqa", root=str(tmp_path), on_error="skip", **{"abstain.share": 0.5, "abstain.seed": 1,
                                                                    "abstain.cache_dir": str(tmp_path / "n")})
    with caplog.at_level(logging.INFO, logger="audiothink"):
        train, held_out = build_dataset(cfg, prompt="{question}\n{choices}", max_audio_seconds=2.0)
    assert held_out == [] and sorted(train["id"]) == ["1", "2"]
    assert all(c[-1] == DEFAULT_LABEL for c in train["choices"])
    assert train["answer"].count(DEFAULT_LABEL) == 1
    assert "What happened in the audio?" in train["prompt"][0]
    text = caplog.text
    assert "train: 2 of 3 rows usable (1 skipped, data.on_error=skip)" in text
    assert "skipped 1 of 3 row(s)" in text and "(1 x audio_path)" in text
    assert ("1 clip is longer than the model's audio window of 2 s and is cut to its first 2 s "
            "(data.long_audio=truncate" in text)
    assert "question_rewrite changed 3 questions" in text
    assert "abstention: 1 of 2 training items" in text

    cfg = data_cfg("avqa", root=str(tmp_path))
    with pytest.raises(DataError, match=r"train_qa.data:3 id=3: audio_path: audio .*dead_3.wav: file not found"):
        build_dataset(cfg, prompt="{question}{choices}", max_audio_seconds=2.0)


def test_build_dataset_hf_and_config_errors(tmp_path):
    from audiothink.plumbing.errors import ConfigError
    from audiothink.sources import build_dataset

    audio_dataset(hf_rows(2)).save_to_disk(str(tmp_path / "ds"))
    cfg = data_cfg("hf", train=str(tmp_path / "ds"), eval=str(tmp_path / "ds"), cache_dir=str(tmp_path / "c"))
    train, held_out = build_dataset(cfg, prompt="{question} {choices}", max_audio_seconds=None)
    assert train["id"] == ["r0", "r1"] and [s.id for s in held_out] == ["r0", "r1"]
    assert all(os.path.isfile(p) for paths in train["audio"] for p in paths)

    OmegaConf.set_struct(cfg, False)
    cfg.fields.questions = "q"
    with pytest.raises(ConfigError, match="unknown schema field"):
        build_dataset(cfg, prompt="{question}", max_audio_seconds=None)
    cfg = data_cfg("hf", train=str(tmp_path / "ds"), format="parquet")
    with pytest.raises(ConfigError, match="data.format must be one of"):
        build_dataset(cfg, prompt="{question}", max_audio_seconds=None)


def test_question_rewrite_can_be_switched_off_from_the_command_line():
    assert data_cfg("avqa").question_rewrite == {"video": "audio"}
    assert data_cfg("avqa", question_rewrite="null").question_rewrite is None
