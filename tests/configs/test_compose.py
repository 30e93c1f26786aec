"""Every config composes, every field binds to its target, typos and bad paths fail before any work."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf
from trl import GRPOConfig

from audiothink.plumbing.errors import ConfigError
from audiothink.grpo_config import build_grpo_config
from audiothink.reward_api import build_rewards
from audiothink.loading import check_model_path
from audiothink.plumbing.cli import register_resolvers

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = {
    g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml")) for g in ("model", "data", "reward", "trainer", "judge")
}
register_resolvers()


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_composes_and_binds(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if option == "jsonl":
        overrides.append("data.train=/x/train.jsonl")
    if group == "judge" and option == "hf":
        overrides.append("judge.path=/x/judge")  # the one mandatory field; nothing is loaded below
    cfg = _compose(overrides)
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.data, resolve=True)
    args = build_grpo_config(cfg.trainer, output_dir=tmp_path, seed=0, reward_weights=[1.0] * len(cfg.reward))
    assert isinstance(args, GRPOConfig)
    funcs, weights = build_rewards(cfg.reward)
    names = [k for k in cfg.reward if k != "formula"] + (["total"] if "formula" in cfg.reward else [])
    assert [f.__name__ for f in funcs] == names
    assert len(weights) == len(funcs)
    # the judge config binds to its class's signature (without loading a judge model)
    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    signature = inspect.signature(get_class(judge.pop("_target_")))
    signature.bind(**judge)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _uncommented_fields(text: str) -> list[str]:
    """Leaf keys with no comment: neither inline nor above them (a run of sibling keys may share one).

    The body of a block scalar (`key: |`, e.g. a judge prompt's template) is text, not keys.
    """
    lines = text.splitlines()
    missing = []
    block_indent = None  # indent of the key that opened a block scalar being skipped
    for i, line in enumerate(lines):
        s = line.strip()
        if block_indent is not None:
            if not s or _indent(line) > block_indent:
                continue
            block_indent = None
        if s.split("#", 1)[0].rstrip().endswith((": |", ": >", ": |-", ": >-")):
            block_indent = _indent(line)
        if not s or s.startswith(("#", "-", "_target_", "_partial_")) or ":" not in s or s.endswith(":"):
            continue
        if "#" in line.split(":", 1)[1]:
            continue
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].strip().startswith("#") and _indent(lines[j]) == _indent(line):
            j -= 1
        if not (j >= 0 and lines[j].strip().startswith("#") and _indent(lines[j]) == _indent(line)):
            missing.append(f"{i + 1}: {s}")
    return missing


def test_every_config_field_is_commented():
    for path in CONFIGS.rglob("*.yaml"):
        assert not _uncommented_fields(path.read_text()), (path, _uncommented_fields(path.read_text()))


def test_comment_check_can_fail():
    assert _uncommented_fields("# a\nx: 1\ny: 2\n") == []
    assert _uncommented_fields("x: 1\n") == ["1: x: 1"]
    assert _uncommented_fields("m:\n  # c\n  a: 1\n\n  b: 2\n") == ["5: b: 2"]
    # a block scalar's text is skipped, the key after it is checked again
    assert _uncommented_fields("# t\nt: |\n  Question: {q}\n\n  Reply:\nx: 1\n") == ["6: x: 1"]


def test_7b_models_select_the_published_recipe():
    for option in ("qwen2_audio_7b", "qwen2_5_omni_7b", "qwen3_omni_30b_a3b"):
        t = _compose([f"model={option}"]).trainer
        assert (t.num_generations, t.learning_rate, t.beta, t.temperature) == (8, 1e-6, 0.04, 1.0)
        assert _compose([f"model={option}"]).model.lora.r == 16


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(Exception, match="trainer.bogus"):
        _compose(["trainer.bogus=1"])
    cfg = _compose()
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.bogus = 1
    with pytest.raises(ConfigError, match="bogus"):
        build_grpo_config(cfg.trainer, output_dir=tmp_path, seed=0, reward_weights=[1.0])


def test_grpo_fields_exist():
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    for option in GROUPS["trainer"]:
        keys = set(OmegaConf.load(CONFIGS / "trainer" / f"{option}.yaml"))
        assert keys <= known, keys - known


@pytest.mark.parametrize("path", ["/some/missing/dir", "./nope", "~/nope-audiothink"])
def test_missing_model_dir_fails_at_once(path):
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        check_model_path(path)


@pytest.mark.e2e
def test_train_fails_fast_on_missing_model_dir(tmp_path):
    """The entry point stops on a bad model path before building data, rewards' judges or the trainer."""
    out = subprocess.run(
        [sys.executable, "-m", "audiothink.train", "model=qwen2_audio_7b", "model.path=/some/missing/dir",
         f"hydra.run.dir={tmp_path}", "data.root=/nonexistent/should-not-be-built"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "model.path='/some/missing/dir': no such checkpoint directory" in out.stderr
    assert not Path("/nonexistent/should-not-be-built").exists()


def test_attention_auto_picks_sdpa_without_flash_attn_or_gpu(monkeypatch):
    import importlib.util

    import torch

    from audiothink.loading import resolve_attention

    assert resolve_attention("eager") == "eager"  # a named kernel is taken as is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attention("auto") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert resolve_attention("auto") == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert resolve_attention("auto") == "flash_attention_2"
