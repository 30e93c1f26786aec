"""Dead runs say they are dead: health/* metrics and a warning naming the cause (audiothink/plumbing/health.py)."""

from __future__ import annotations

import logging

import pytest
from transformers import TrainerCallback

from audiothink.plumbing.progress import use_run_console
from audiothink.plumbing.health import CAUSES, HealthMonitor, causes
from audiothink.trainer import AudioGRPOTrainer
from audiothink.rewards import Format
from tests.helpers import load_toy, toy_grpo_args
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
    health = use_run_console(trainer)  # as audiothink.train does
    trainer.train()
    return [r for r in seen.records if "reward" in r], health


@pytest.mark.parametrize("cause, rewards, args", [
    ("no_reward", [_nothing], {}),
    ("zero_variance", [_constant], {}),
    ("truncated", [Format()], {"max_completion_length": 2}),
])
def test_a_run_without_learning_signal_says_why(cause, rewards, args, toy_model_dir, toy_files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="audiothink.plumbing.health"):
        logs, health = _run(toy_model_dir, toy_files, tmp_path, rewards, **args)
    assert len(logs) == 3
    assert all(r[f"health/{cause}"] == 1.0 and r["health/ok"] == 0.0 for r in logs), logs
    warnings = [r.getMessage() for r in caplog.records if "no learning signal" in r.getMessage()]
    assert any(f"for 3 logging steps" in w for w in warnings), warnings
    assert cause in health.active
    if cause == "truncated":  # cut after 2 tokens: no completion reached an answer block
        assert all(r["completions/answered"] == 0.0 for r in logs), logs


def test_a_healthy_run_reports_ok(toy_model_dir, toy_files, tmp_path, caplog):
    # rewards that differ within groups (some completions are well formed, some are not, early on)
    with caplog.at_level(logging.WARNING, logger="audiothink.plumbing.health"):
        logs, health = _run(toy_model_dir, toy_files, tmp_path, [Format()], learning_rate=1e-6,
                            temperature=1.5)
    assert all(r["health/no_reward"] == 0.0 and r["health/truncated"] == 0.0 for r in logs)
    assert not health.active or health.active == ["zero_variance"]


def test_causes_table():
    assert causes({"health/scored": 0.0}) == {"no_reward": True, "zero_variance": False, "truncated": False}
    assert causes({"frac_reward_zero_std": 0.96, "completions/clipped_ratio": 0.5}) == {
        "no_reward": False, "zero_variance": True, "truncated": False}
    assert causes({"completions/clipped_ratio": 1.0, "completions/answered": 0.0})["truncated"]
    monitor = HealthMonitor(patience=2)
    state = type("S", (), {"global_step": 5})()
    for _ in range(2):
        monitor.on_log(None, state, None, logs={"loss": 0.0, "frac_reward_zero_std": 1.0})
    assert monitor.active == ["zero_variance"]
    monitor.on_log(None, state, None, logs={"loss": 0.0, "frac_reward_zero_std": 0.2})
    assert monitor.active == []


def test_the_threshold_is_95_percent_inclusive():
    """README: a cause holds when >= 95 % of the groups (completions) show it."""
    assert causes({"frac_reward_zero_std": 0.95})["zero_variance"]
    assert not causes({"frac_reward_zero_std": 0.9499})["zero_variance"]
    assert causes({"completions/clipped_ratio": 0.95, "completions/answered": 0.05})["truncated"]
    assert not causes({"completions/clipped_ratio": 0.9499, "completions/answered": 0.0})["truncated"]
    assert not causes({"health/scored": 0.01})["no_reward"] and causes({"health/scored": 0.0})["no_reward"]


def test_cut_completions_that_answered_are_not_called_truncated():
    """Issue 17: steps at 81-100 % accuracy were told ">= 95 % were cut ... none has an answer": TRL counts a
    completion that answered and ran on to the limit without an end token as cut. The cause holds only when
    the completions have no answer (<= 5 % with an answer block)."""
    cut = {"loss": 0.0, "completions/clipped_ratio": 1.0, "accuracy/rate": 0.81}
    assert not causes({**cut, "completions/answered": 0.9})["truncated"]
    assert not causes({**cut, "completions/answered": 0.06})["truncated"]
    assert not causes(cut)["truncated"]  # no count of answers: nothing known, nothing claimed
    assert causes({**cut, "completions/answered": 0.0})["truncated"]


def test_a_lasting_cause_warns_once_and_again_after_it_clears(caplog):
    monitor = HealthMonitor(patience=3)
    state = type("S", (), {"global_step": 0})()
    dead, alive = {"frac_reward_zero_std": 1.0}, {"frac_reward_zero_std": 0.1}

    def warnings():
        return [r.getMessage() for r in caplog.records if "no learning signal" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="audiothink.plumbing.health"):
        for step, logs in enumerate([dead] * 2, 1):
            state.global_step = step
            monitor.on_log(None, state, None, logs={"loss": 0.0, **logs})
        assert warnings() == [] and monitor.active == []  # under patience: not yet
        for step, logs in enumerate([dead] * 5, 3):
            state.global_step = step
            monitor.on_log(None, state, None, logs={"loss": 0.0, **logs})
        assert warnings() == ["step 3: no learning signal for 3 logging steps: " + CAUSES["zero_variance"]]
        assert monitor.active == ["zero_variance"]
        for step, logs in enumerate([alive] + [dead] * 3, 8):
            state.global_step = step
            monitor.on_log(None, state, None, logs={"loss": 0.0, **logs})
        assert len(warnings()) == 2 and warnings()[1].startswith("step 11: ")
