"""The listening check on the committed toy checkpoint: `benchmark=toy eval.listen_check=noise` over the
toy's 300 held-out items. The warm start answers pitch and count from the audio, so noise must cost
accuracy; the figure is recorded in bench/RESULTS.md."""

from __future__ import annotations

import pytest

from tests.helpers import run_eval


@pytest.fixture(scope="module")
def toy_eval_300(tmp_path_factory):
    from audiothink.toy.data import generate_toy

    # the held-out split does not depend on n_train: these are the default run's 300 items
    return generate_toy(tmp_path_factory.mktemp("toy300"), n_train=4, n_eval=300, seed=0)["eval"].parent


def test_noise_drops_accuracy_on_the_toy(tmp_path, toy_eval_300):
    r = run_eval(tmp_path / "out", "benchmark=toy", "eval.listen_check=noise", f"benchmark.root={toy_eval_300}",
                 "benchmark.generate_toy=false", "eval.batch_size=50")
    lc = r["listen_check"]
    assert lc["n"] == 300 and lc["audio"] == "noise"
    assert lc["drop_points"] > 0
    assert lc["accuracy_real"] == r["summary"]["overall"]["accuracy"]
    assert lc["by"]["task"]["count"]["drop_points"] > 0  # counting beeps needs the beeps
    assert (tmp_path / "out" / "predictions_noise.jsonl").is_file()
    assert (tmp_path / "out" / "chart_listen_check.png").is_file()
    assert "## Listening check (noise)" in (tmp_path / "out" / "report.md").read_text()
