"""The fast path's compile cache: where torch.compile keeps its work, and that a second process reuses it.

rollout.fast compiles the decode step (about a minute per prompt bucket at 7B on a GPU). The trainer points
torch.compile's on-disk caches at rollout.compile_cache_dir (default ~/.cache/audiothink/inductor), so a
later run finds them. The slow test runs the toy trainer's fast rollout in separate processes, compiled on
CPU (tests/compile_probe.py), and reads torch.compile's own counters: the first process compiles (FX graph
cache misses), a second one with the same folder loads (hits, no miss), one with a fresh folder compiles again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from audiothink.fast_rollout import DEFAULT_COMPILE_CACHE, enable_fast_generation, use_compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_an_explicit_folder_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    got = use_compile_cache(tmp_path / "config" / "inductor")
    assert got == str(tmp_path / "config" / "inductor") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert Path(got).is_dir()


def test_a_folder_the_user_exported_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    assert use_compile_cache(None) == str(tmp_path / "user") == os.environ["TORCHINDUCTOR_CACHE_DIR"]


@pytest.mark.parametrize("env", ["unset", "torch default"])
def test_else_the_default_under_home(monkeypatch, tmp_path, env):
    # torch writes its own default into the variable the first time it compiles: that is not a user's choice
    if env == "unset":
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.setenv("HOME", str(tmp_path))
    got = use_compile_cache(None)
    assert got == str(tmp_path / ".cache" / "audiothink" / "inductor") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert DEFAULT_COMPILE_CACHE == "~/.cache/audiothink/inductor"


def test_enable_fast_generation_sets_the_folder(monkeypatch, tmp_path):
    """The fast path's switch goes through use_compile_cache (here on a stand-in trainer: no model needed)."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)

    class Config:
        cache_implementation, disable_compile = None, True

    stand_in = type("T", (), {"generation_config": Config(), "pad_to_multiple_of": None})()
    got = enable_fast_generation(stand_in, bucket=32, compile_cache_dir=tmp_path / "c")
    assert got == str(tmp_path / "c") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert (stand_in.generation_config.cache_implementation, stand_in.pad_to_multiple_of) == ("static", 32)


def _probe(cache: Path, work: Path, buckets: int, *extra: str) -> tuple[list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "tests.compile_probe", str(cache), str(work), str(buckets), *extra],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]["cache_dir"]


@pytest.mark.e2e
@pytest.mark.slow  # three processes that compile the toy on CPU: ~2-3 min on a loaded 2-core machine
def test_a_second_process_reuses_the_compiled_rollout(tmp_path):
    cache = tmp_path / "cache"
    first, used = _probe(cache, tmp_path / "w1", 3, "--second-trainer")
    assert used == str(cache)
    assert (cache / "fxgraph").is_dir() and any((cache / "fxgraph").rglob("*"))
    a = first[0]["bucket"]
    assert [r["bucket"] for r in first] == [a, a, a + 64, a + 128, a, a]
    assert [r["trainer"] for r in first] == [1, 1, 1, 1, 1, 2]
    # what transformers + torch do with buckets: the first compiles one graph, the same bucket again reuses it,
    # the second bucket compiles once more (dynamo makes the changed sizes symbolic), and that graph serves
    # the third bucket without compiling; a second trainer on a second model in the same process compiles
    # nothing either (dynamo's guards are on shapes and types, not on which model object)
    assert [r["graphs"] for r in first] == [1, 1, 2, 2, 2, 2]
    # transformers never shrinks a model's static cache (the prompt + 4 new tokens, less the last one, which
    # is never fed back): back in the first bucket, the first model still decodes with the third bucket's
    # cache length; a fresh model starts from its own
    assert [r["cache_len"] for r in first] == [a + 3, a + 3, a + 67, a + 131, a + 131, a + 3]
    assert first[0]["fx_misses"] >= 1 and first[-1]["fx_hits"] == 0

    second, _ = _probe(cache, tmp_path / "w2", buckets=1)
    # a new process: dynamo traces again, inductor finds every graph on disk
    assert second[0]["graphs"] == 1 and second[0]["fx_hits"] >= 1 and second[0]["fx_misses"] == 0

    fresh, _ = _probe(tmp_path / "other", tmp_path / "w3", buckets=1)
    assert fresh[0]["fx_misses"] >= 1 and fresh[0]["fx_hits"] == 0  # the hits came from the folder
