"""audiothink.benchmarks (load_benchmark): a benchmark loaded by name, with its audio under another data root.
Each loader's own tests: tests/benchmarks/test_<loader>.py; with a model: tests/test_evaluate*.py."""

from __future__ import annotations

from audiothink.benchmarks import load_benchmark
from tests.helpers import make_mmar_fixture


def test_data_root_moves_the_audio(tmp_path):
    meta = make_mmar_fixture(tmp_path / "meta")
    b = load_benchmark("mmar", meta, tmp_path / "elsewhere")
    assert b.samples[0].audio[0] == str(tmp_path / "elsewhere" / "audio" / "0000.wav")
