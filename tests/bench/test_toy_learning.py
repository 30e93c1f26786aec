"""bench/toy_learning.py --cold-start runs the README's cold start: the same commands, argument for argument."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.helpers import load_bench_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("toy_learning")


def _readme_cold_start() -> list[list[str]]:
    """The README's toy cold-start commands (section "Cold start (SFT) then GRPO"), after ``python -m``."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("```bash\npython -m audiothink.toy.warmstart --sft-rows"):]
    block = block[: block.index("```", 3)]
    lines = [line.split("#")[0].strip() for line in block.splitlines()[1:]]
    return [shlex.split(line)[2:] for line in lines if line.startswith("python -m audiothink.")]


def test_the_cold_start_is_the_readmes(bench):
    readme = _readme_cold_start()
    assert [cmd[0] for cmd in readme] == ["audiothink.toy.warmstart", "audiothink.sft", "audiothink.sft",
                                          "audiothink.train"]
    assert readme[3] == ["audiothink.train", "reward=adaptive", "model.path=runs/toy-sft-think/final"]
    ours = bench.cold_start_commands(7, "runs/toy-sft-rows", "runs/toy-sft", "runs/toy-sft-think",
                                     "${AUDIOTHINK_CACHE:-$HOME/.cache/audiothink}/toy/train.jsonl")
    # the bench adds the seed (the README's commands run seed 0, the default); otherwise the same arguments
    seeded = [[a for a in cmd if a != "seed=7"] for cmd in ours]
    assert seeded[0] == ["audiothink.toy.warmstart", "--sft-rows", "runs/toy-sft-rows", "--seed", "7"]
    assert seeded[0][:3] == readme[0]
    for got, want in zip(seeded[1:], readme[1:3], strict=True):
        assert sorted(got) == sorted(want)
    assert all("seed=7" in cmd for cmd in ours[1:])
