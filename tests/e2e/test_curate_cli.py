"""The command lines of curation and of training without its list: a wrong path is one line and exit 2, and the
run folder made for it goes again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.e2e
@pytest.mark.parametrize("entry,args,line", [
    ("audiothink.train", ["data.exclude=/no/such/ids.txt"],
     "error: data.exclude=/no/such/ids.txt: no such file (the id list, one id a line: python -m audiothink.curate "
     "writes one as <run>/text_answerable.txt)"),
    ("audiothink.curate", ["data=jsonl", "data.train=/no/such/train.jsonl"],
     "error: /no/such/train.jsonl: metadata file not found (set by data.train = /no/such/train.jsonl)"),
])
def test_the_cli_says_one_line_and_exits_2(entry, args, line, tmp_path):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", entry, f"hydra.run.dir={tmp_path / 'run'}", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "run").exists()  # the folder it made goes again


def test_curate_on_a_small_set_writes_its_run_folder(tmp_path, toy_files):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    run = tmp_path / "run"
    args = ["data=jsonl", f"data.train={toy_files['train']}", "curate.limit=12", f"hydra.run.dir={run}"]
    out = subprocess.run([sys.executable, "-m", "audiothink.curate", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for name in ("config.yaml", "curate.log", "curate.jsonl", "summary.json", "text_answerable.txt",
                 "predictions.jsonl", "predictions_silence_r0.jsonl", "predictions_silence_r2.jsonl"):
        assert (run / name).is_file(), name
    assert f"data.exclude={run / 'text_answerable.txt'}" in out.stdout
    listed = [i for i in (run / "text_answerable.txt").read_text().splitlines() if not i.startswith("#")]
    assert "listed: right silent" in out.stdout and len(listed) < 12
    # a rerun into the folder answers nothing again
    again = subprocess.run([sys.executable, "-m", "audiothink.curate", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["seconds"] == 0
    assert [i for i in (run / "text_answerable.txt").read_text().splitlines() if not i.startswith("#")] == listed
