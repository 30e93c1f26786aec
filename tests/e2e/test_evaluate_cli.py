"""The command line itself: `python -m audiothink.evaluate` in a subprocess (exit codes, printed lines)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers import make_mmau_fixture


def test_cli_on_the_official_mmau_format(tmp_path):
    """The acceptance command itself, on the fixture: `python -m audiothink.evaluate benchmark=mmau_test_mini`."""
    meta = make_mmau_fixture(tmp_path / "mmau", "mmau-test-mini-v05.15.25.json")
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "audiothink.evaluate", "benchmark=mmau_test_mini", f"benchmark.root={tmp_path / 'mmau'}",
         f"benchmark.meta={meta}", "eval.max_new_tokens=16", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mmau_test_mini (v05.15.25), 12 items" in out.stdout
    assert re.search(r"^Total : \d+\.\d\d% over 12 samples$", out.stdout, re.M)
    assert re.search(r"^speech : \d+\.\d\d% over 4 samples$", out.stdout, re.M)
    # not a terminal: no progress bar (its carriage returns would litter a log), the rate in the last line
    assert "item/s" not in out.stderr and re.search(r"predicted 12 items this run \(\d+\.\d\d items/s\)", out.stdout)
    results = json.loads((run / "results.json").read_text())
    assert results["benchmark"]["version"] == "v05.15.25"
    assert (run / "submission_mmau-test-mini-v05.15.25.json").is_file()


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "audiothink.evaluate", "benchmark=mmau_test_mini",
         f"benchmark.meta={tmp_path / 'missing.json'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "metadata file not found" in out.stderr and "Traceback" not in out.stderr
