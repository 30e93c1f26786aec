"""The entry point on bad input: one clear message naming row ids and paths, exit code 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from audiothink.audio import AudioError
from tests.test_trainer import _trainer

ROW = '{{"id": "{id}", "audio": "{audio}", "question": "is the tone high or low?", "choices": ["low", "high"], "answer": "{answer}"}}'


def test_bad_rows_stop_the_run_before_training(toy_files, tmp_path):
    ok = next((toy_files["train"].parent / "audio").glob("*.wav"))
    shutil.copy(ok, tmp_path / "ok.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not a wave file")
    rows = [
        ROW.format(id="r-answer", audio="ok.wav", answer="medium"),
        ROW.format(id="r-missing", audio="missing.wav", answer="low"),
        ROW.format(id="r-corrupt", audio="corrupt.wav", answer="low"),
        ROW.format(id="r-good", audio="ok.wav", answer="low"),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "audiothink.train", "data=jsonl", f"data.train={tmp_path / 'train.jsonl'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    err = out.stderr
    assert "3 problem row(s)" in err and "Traceback" not in err
    assert "id=r-answer: answer: 'medium' is not one of the choices" in err
    assert "id=r-missing" in err and str(tmp_path / "missing.wav") in err
    assert "id=r-corrupt" in err and str(tmp_path / "corrupt.wav") in err
    assert "r-good" not in err
    assert not (tmp_path / "run" / "final").exists()


def test_audio_that_vanishes_after_validation_names_row_and_path(toy_model_dir, toy_files, tmp_path):
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, max_steps=1)
    row = dict(trainer.train_dataset[0])
    row["audio"] = [str(tmp_path / "gone.wav")]
    with pytest.raises(AudioError, match=rf"gone\.wav.*{row['id']}|{row['id']}.*gone\.wav"):
        trainer._load_waves([row])
