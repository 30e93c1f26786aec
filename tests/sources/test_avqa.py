"""audiothink.sources.avqa: the AVQA reader (R1-AQA lines, the original annotations, question rewrites)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiothink.audio import write_wav
from audiothink.data import DataError, Sample
from audiothink.sources.avqa import load_avqa
from tests.helpers import R1AQA_ROW


@pytest.fixture
def avqa(tmp_path) -> Path:
    write_wav(tmp_path / "audio" / "-HG3Omg_89c_30.wav", np.full(1600, 0.1, np.float32))
    write_wav(tmp_path / "audio" / "abc_7.wav", np.full(1600, 0.1, np.float32))
    second = {**R1AQA_ROW, "id": 184, "video_name": "abc_000007", "question_text": "Why is the video loud? Video!",
              "audio_path": "C:\\data\\abc_7.wav", "answer": 3}
    (tmp_path / "train_qa.data").write_text(json.dumps(R1AQA_ROW) + "\n" + json.dumps(second) + "\n")
    return tmp_path


def test_avqa_r1aqa_lines(avqa):
    result = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio")
    first, second = result.samples
    assert first == Sample(
        id="183", audio=(str(avqa / "audio" / "-HG3Omg_89c_30.wav"),), question="What happened in the audio?",
        choices=tuple(R1AQA_ROW["multi_choice"]), answer="Yacht consignment", task="Happening", category="View",
        source="AVQA",
    )
    assert first.extra == {"video_name": "-HG3Omg_89c_000030", "video_id": 341}
    # plain, case-sensitive replacement as R1-AQA does it; the Windows path is reduced to its name too
    assert second.question == "Why is the audio loud? Video!" and second.answer == "Consignment car"
    assert second.audio == (str(avqa / "audio" / "abc_7.wav"),)
    assert result.counts["questions_rewritten"] == 2


def test_avqa_rewrite_switches_off_and_is_configurable(avqa):
    off = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio", question_rewrite=None)
    assert off.samples[0].question == "What happened in the video?" and off.counts["questions_rewritten"] == 0
    both = load_avqa(avqa / "train_qa.data", audio_root=avqa / "audio",
                     question_rewrite={"video": "audio", "Video": "Audio"})
    assert both.samples[1].question == "Why is the audio loud? Audio!"


def test_avqa_original_annotations_need_a_template(avqa):
    original = {k: v for k, v in R1AQA_ROW.items() if k not in ("audio_path", "dataset_name")}
    meta = avqa / "train_qa.json"
    meta.write_text(json.dumps([original]))
    with pytest.raises(DataError, match=r"train_qa.json:0 id=183: audio_path: missing .*audio_template"):
        load_avqa(meta, audio_root=avqa / "audio")
    (s,) = load_avqa(meta, audio_root=avqa / "audio", audio_template="{ytid}_{start}.wav").samples
    assert s.audio == (str(avqa / "audio" / "-HG3Omg_89c_30.wav"),) and s.source == "avqa"
    with pytest.raises(DataError, match=r"audio: audio_template '\{clip\}.wav' needs field 'clip'"):
        load_avqa(meta, audio_root=avqa / "audio", audio_template="{clip}.wav")


def test_avqa_json_lines_named_json_and_full_paths(avqa):
    meta = avqa / "train_r1aqa_line.json"  # R1-AQA-style lines under a .json name
    row = {**R1AQA_ROW, "audio_path": str(avqa / "audio" / "-HG3Omg_89c_30.wav")}
    meta.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": 2}) + "\n")
    result = load_avqa(meta, audio_basename=False)
    assert [s.id for s in result.samples] == ["183", "2"]
    assert result.samples[0].audio == (row["audio_path"],)


def test_avqa_messages_use_avqa_field_names(avqa):
    meta = avqa / "bad.jsonl"
    meta.write_text(json.dumps({**R1AQA_ROW, "answer": True}) + "\n" + json.dumps({**R1AQA_ROW, "id": "x", "answer": "2"}))
    message = str(pytest.raises(DataError, load_avqa, meta, audio_root=avqa / "audio").value)
    assert "id=183: answer: expected a string, got bool" in message
    assert "id=x: answer: '2' is not one of the choices" in message  # auto: a string is choice text
    (s,) = load_avqa(meta, audio_root=avqa / "audio", answer_format="index", on_error="skip").samples
    assert s.answer == "Sailboat set sail"
