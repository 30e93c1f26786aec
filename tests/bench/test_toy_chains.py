"""bench/toy_chains.py: the warm start's chain figures, per difficulty, are chain_metrics of its own completions."""

from __future__ import annotations

import pytest

from tests.helpers import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("toy_chains")


def test_figures_per_difficulty(bench, toy_model_dir, toy_files):
    """Sampled hot (2.0) and forced to think, the warm start breaks some chains and formats: figures to check."""
    figures = bench.measure(toy_model_dir, toy_files["eval"], do_sample=True, temperature=2.0, samples=2,
                            force_mode="think", seed=0)
    overall, easy, hard = figures["overall"], figures["easy"], figures["hard"]
    assert overall["completions"] == 32 and easy["completions"] == hard["completions"] == 16
    assert overall["thought_out"] == easy["thought_out"] + hard["thought_out"] > 0
    for f in figures.values():
        assert f["think_rate"] == f["thought_out"] / f["completions"]
        assert {"inconsistent_share", "invalid_chain_share"} <= set(f)
        assert set(f) <= {"completions", "thought_out", "correct_thought_out", "think_rate", "inconsistent_share",
                          "invalid_chain_share", "invalid_correct_share"}
    assert 0 < overall["invalid_chain_share"] < 1 or 0 < overall["inconsistent_share"] < 1  # not a 0 == 0 check
    # the overall share is the slices' shares weighted by their thought-out counts
    for key in ("inconsistent_share", "invalid_chain_share"):
        assert overall[key] == pytest.approx((easy[key] * easy["thought_out"] + hard[key] * hard["thought_out"])
                                             / overall["thought_out"])
