"""audiothink/plumbing/cli.py: a launch composes its config once; a wrong override is still one line and exit 2."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def launch(tmp_path, monkeypatch):
    """Run ``python -m audiothink.train <overrides>`` in this process up to the training body: the command line,
    hydra's composition, its callbacks (the key check, the run folder's claim) and the run folder are the real
    ones; ``train(cfg)``, the training itself, only records the config it was given. Returns
    ``(run(overrides), compositions, configs)``: each call of hydra's config loader (what both hydra.main and
    hydra's compose API compose with) appends its run mode and overrides to ``compositions``."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra

    import audiothink.train as entry
    from audiothink.plumbing.cli import run_checked

    compositions, configs = [], []
    load = ConfigLoaderImpl.load_configuration

    def counted(self, config_name, overrides, run_mode, *args, **kwargs):
        compositions.append((run_mode, list(overrides)))
        return load(self, config_name, overrides, run_mode, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted)
    monkeypatch.setattr(entry, "train", lambda cfg: configs.append(cfg) or {})
    monkeypatch.setenv("AUDIOTHINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(overrides):
        monkeypatch.setattr(sys, "argv", ["audiothink.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
        run_checked("train", entry.main)

    yield run, compositions, configs
    GlobalHydra.instance().clear()
    for handler in root.handlers:  # hydra's job logging (console, run/train.log): the test process's own back
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


def test_a_successful_launch_composes_once(launch):
    """The config the run gets is composed once, by hydra.main; audiothink's checks compose nothing more. (Hydra 1.3
    composes a first time itself to read hydra.mode, in multirun mode, errors ignored: hydra._internal.hydra's
    get_mode; that one is hydra's, the same with or without audiothink.)"""
    from hydra.types import RunMode

    run, compositions, configs = launch
    # a GRPOConfig field and a new reward added with '+', a plain override, a group: every kind the checks pass
    run(["+trainer.save_strategy=no", "+reward.brevity.weight=0.2",
         "+reward.brevity.fn._target_=audiothink.rewards.Format", "eval.num_samples=8", "model=toy_lora"])
    assert [mode for mode, _ in compositions].count(RunMode.RUN) == 1, compositions
    assert [mode for mode, _ in compositions] == [RunMode.MULTIRUN, RunMode.RUN], compositions  # hydra.main's two
    (cfg,) = configs
    assert cfg.trainer.save_strategy == "no" and cfg.eval.num_samples == 8 and cfg.reward.brevity.weight == 0.2
    assert cfg.model.lora is not None


def test_a_crash_in_the_run_is_reported_by_hydra(launch, monkeypatch, capsys):
    """Hydra raises its composition errors to run_checked (HYDRA_FULL_ERROR) only while it composes: a crash in
    the run itself gets hydra's report and exit 1, not a second composition or an error line."""
    import audiothink.train as entry

    run, compositions, _ = launch

    def crash(cfg):
        raise RuntimeError("boom in the run")

    monkeypatch.setattr(entry, "train", crash)
    with pytest.raises(SystemExit) as stop:
        run(["eval.num_samples=8"])
    assert stop.value.code == 1
    assert "HYDRA_FULL_ERROR" not in os.environ
    err = capsys.readouterr().err
    assert "RuntimeError: boom in the run" in err and "error:" not in err
    assert len(compositions) == 2  # hydra.main's own (see above), no explaining one


@pytest.mark.parametrize("overrides, message", [
    # hydra refuses these: the overrides are composed a second time, only to say which and why
    (["eval.num_sample=8"], "error: unknown key eval.num_sample (did you mean eval.num_samples?)"),
    (["model=toyy"], "error: model=toyy: no such option; model is one of qwen2_5_omni_7b, qwen2_audio_7b, "
                     "qwen3_omni_30b_a3b, qwen3_omni_tiny, toy, toy_lora (did you mean model=toy?)"),
    # hydra adds this one silently: the key check after the composition refuses it
    (["+eval.num_sample=8"], "error: unknown key eval.num_sample (did you mean eval.num_samples?); '+' adds keys "
                             "only under reward.* (a new reward), trainer.* (a GRPOConfig field) and hydra.*"),
    # as typed, not resolved: the callback reads the override's ${judge} as text, not as the judge mapping
    (["+eval.num_sample=${judge}"], "error: unknown key eval.num_sample (did you mean eval.num_samples?); '+' adds "
                                   "keys only under reward.* (a new reward), trainer.* (a GRPOConfig field) and hydra.*"),
], ids=["misspelt key", "bad option", "silently added key", "silently added interpolation"])
def test_a_wrong_override_is_one_line_exit_2_and_no_run_folder(launch, tmp_path, capsys, overrides, message):
    run, compositions, configs = launch
    with pytest.raises(SystemExit) as stop:
        run(overrides)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not configs and not (tmp_path / "run").exists()
    assert "HYDRA_FULL_ERROR" not in os.environ


def test_the_command_line_says_a_silently_added_key_before_the_run_folder_exists(tmp_path):
    env = dict(os.environ, AUDIOTHINK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "audiothink.train", "+trainer.save_stratgy=no"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: unknown key trainer.save_stratgy: not a field of TRL's GRPOConfig (did you mean "
                           "trainer.save_strategy"), line
    assert not (tmp_path / "runs").exists()  # the default run folder was never claimed
