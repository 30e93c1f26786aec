"""A resume takes the run's own config.yaml; overrides at resume apply only where safe, others are refused.

The configs are composed by hydra as the command line would; the end-to-end checks (kill -9, resume with no
overrides, a refused learning rate, an extension) are tests/e2e/test_resume.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audiothink.plumbing import resume_config
from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.runfiles import write_config
from audiothink.plumbing.cli import register_resolvers

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_resolvers()
FIRST = ["trainer.max_steps=10", "trainer.save_steps=4", "trainer.logging_steps=1", "eval.num_samples=0"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def run(tmp_path):
    """A run folder whose first start had the FIRST overrides (its config.yaml as train() writes it)."""
    write_config(tmp_path, _compose([*FIRST, f"output_dir={tmp_path}"]), None)
    return tmp_path


def _resume(run, monkeypatch, extra=()):
    overrides = [f"output_dir={run}", "resume=true", *extra]
    monkeypatch.setattr(resume_config, "_task_overrides", lambda: overrides)  # what hydra records for them
    return resume_config.resumed_config(_compose(overrides), run)


def test_resume_without_overrides_is_the_runs_config(run, monkeypatch):
    cfg = _resume(run, monkeypatch)
    assert cfg.trainer.max_steps == 10 and cfg.trainer.save_steps == 4 and cfg.eval.num_samples == 0
    assert cfg.resume is True and cfg.output_dir == str(run)
    assert OmegaConf.is_struct(cfg)
    # everything else as the run had it
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    got = OmegaConf.to_container(cfg)
    assert {k: v for k, v in got.items() if k != "resume"} == {k: v for k, v in saved.items() if k != "resume"}


def test_repeating_the_first_starts_overrides_resumes(run, monkeypatch):
    assert _resume(run, monkeypatch, FIRST).trainer.max_steps == 10


def test_safe_overrides_apply_on_top(run, monkeypatch):
    cfg = _resume(run, monkeypatch, ["trainer.max_steps=20", "log.plots=false", "trainer.save_total_limit=1"])
    assert (cfg.trainer.max_steps, cfg.log.plots, cfg.trainer.save_total_limit) == (20, False, 1)
    assert cfg.trainer.save_steps == 4 and cfg.eval.num_samples == 0


@pytest.mark.parametrize("override, key", [
    ("trainer.learning_rate=1e-3", "trainer.learning_rate"),  # the restored optimizer and scheduler would win
    ("force_mode=think", "force_mode"),  # the "before" figures were scored with free choice
    ("reward.accuracy.weight=2.0", "reward.accuracy.weight"),
    ("cpu_threads=2", "cpu_threads"),
    ("model=qwen2_5_omni_7b", "model."),  # a group choice changes every key under it
])
def test_an_override_that_changes_the_run_is_refused_naming_the_key(run, monkeypatch, override, key):
    with pytest.raises(ConfigError) as e:
        _resume(run, monkeypatch, [override, "trainer.max_steps=20"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("resume: ") and key in msg, msg
    assert "trainer.max_steps (" not in msg  # the safe one is not named as a problem
    # the callback's check (before hydra writes into the folder) says the same
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resume_config.check_resume_config(_compose([f"output_dir={run}", "resume=true", override]), run,
                                          [f"output_dir={run}", "resume=true", override])


def test_no_config_yaml_keeps_the_composed_config(tmp_path, monkeypatch):
    cfg = _resume(tmp_path, monkeypatch, ["trainer.learning_rate=1e-3"])
    assert cfg.trainer.learning_rate == 1e-3
