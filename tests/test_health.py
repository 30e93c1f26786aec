"""Dead runs say they are dead: health/* metrics and a warning naming the cause (audiothink/health.py)."""

from __future__ import annotations

import logging

import pytest
from transformers import TrainerCallback

from audiothink.health import HealthMonitor, causes
from audiothink.trainer import AudioGRPOTrainer
from rewards import Format
from tests.conftest import load_toy, toy_grpo_args
from tests.test_trainer import _dataset


class _Logs(TrainerCallback):
    def __init__(self):
        self.records = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.records.append(dict(logs or {}))


def _nothing(completions, **kwargs):
    return [None] * len(completions)  # e.g. a formula dividing by zero for every sample


def _constant(completions, **kwargs):
    return [1.0] * len(completions)


def _run(toy_model_dir, toy_files, tmp_path, rewards, **args):
    model, processor = load_toy(toy_model_dir)
    seen = _Logs()
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=rewards,
                               args=toy_grpo_args(tmp_path, max_steps=3, **args), train_dataset=_dataset(toy_files),
                               max_audio_seconds=2.0, callbacks=[seen])
    trainer.train()
    return [r for r in seen.records if "reward" in r], trainer


@pytest.mark.parametrize("cause, rewards, args", [
    ("no_reward", [_nothing], {}),
    ("zero_variance", [_constant], {}),
    ("truncated", [Format()], {"max_completion_length": 2}),
])
def test_a_run_without_learning_signal_says_why(cause, rewards, args, toy_model_dir, toy_files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="audiothink.health"):
        logs, trainer = _run(toy_model_dir, toy_files, tmp_path, rewards, **args)
    assert len(logs) == 3
    assert all(r[f"health/{cause}"] == 1.0 and r["health/ok"] == 0.0 for r in logs), logs
    warnings = [r.getMessage() for r in caplog.records if "no learning signal" in r.getMessage()]
    assert any(f"for 3 logging steps" in w for w in warnings), warnings
    assert cause in trainer.health.active


def test_a_healthy_run_reports_ok(toy_model_dir, toy_files, tmp_path, caplog):
    # rewards that differ within groups (some completions are well formed, some are not, early on)
    with caplog.at_level(logging.WARNING, logger="audiothink.health"):
        logs, trainer = _run(toy_model_dir, toy_files, tmp_path, [Format()], learning_rate=1e-6,
                             temperature=1.5)
    assert all(r["health/no_reward"] == 0.0 and r["health/truncated"] == 0.0 for r in logs)
    assert not trainer.health.active or trainer.health.active == ["zero_variance"]


def test_causes_table():
    assert causes({"health/scored": 0.0}) == {"no_reward": True, "zero_variance": False, "truncated": False}
    assert causes({"frac_reward_zero_std": 0.96, "completions/clipped_ratio": 0.5}) == {
        "no_reward": False, "zero_variance": True, "truncated": False}
    assert causes({"completions/clipped_ratio": 1.0})["truncated"]
    monitor = HealthMonitor(patience=2)
    state = type("S", (), {"global_step": 5})()
    for _ in range(2):
        monitor.on_log(None, state, None, logs={"loss": 0.0, "frac_reward_zero_std": 1.0})
    assert monitor.active == ["zero_variance"]
    monitor.on_log(None, state, None, logs={"loss": 0.0, "frac_reward_zero_std": 0.2})
    assert monitor.active == []
