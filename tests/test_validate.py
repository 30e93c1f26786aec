"""A bad config value stops in the first seconds, before data or model load, with one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audiothink.errors import ConfigError
from audiothink.setup import register_resolvers
from audiothink.validate import check_dataset_size, check_train_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
register_resolvers()


def _compose(overrides=(), name="train"):
    from audiothink.evaluate import register_eval_resolvers

    register_eval_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides))


# (override, a fragment of the message); each was accepted, or failed late, before
BAD = [
    ("trainer.learning_rate=-1e-4", "trainer.learning_rate=-0.0001: must be > 0"),
    ("trainer.learning_rate=0", "trainer.learning_rate=0: must be > 0"),
    ("trainer.beta=-0.04", "trainer.beta=-0.04: the KL weight must be >= 0"),
    ("trainer.max_completion_length=0", "trainer.max_completion_length=0: must be a whole number >= 1"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size=0: must be a whole number >= 1"),
    ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps=0: must be a whole number >= 1"),
    ("trainer.num_iterations=0", "trainer.num_iterations=0: must be a whole number >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1"),
    ("trainer.temperature=0", "trainer.temperature=0: must be > 0"),
    ("trainer.temperature=-1.0", "trainer.temperature=-1.0: must be > 0"),
    ("trainer.loss_type=ppo", "trainer.loss_type='ppo': must be one of grpo, dr_grpo, dapo"),
    ("trainer.num_generations=6", "trainer.num_generations=6 does not divide the generation batch of 128"),
    ("trainer.num_generations=1", "GRPO needs at least 2 completions"),
    ("model.max_audio_seconds=0", "model.max_audio_seconds=0: must be > 0"),
    ("model.max_audio_seconds=-2", "model.max_audio_seconds=-2: must be > 0"),
    ("model.freeze_audio_encoder=yes", "model.freeze_audio_encoder='yes': must be true or false"),
    ("rollout.compile_cache_dir=3", "rollout.compile_cache_dir=3: must be a folder path"),
    ("rollout.compile_cache_dir=''", "rollout.compile_cache_dir='': must be a folder path"),
    ("rollout.compile_cache_dir=/tmp/compiled", None),
    ("eval.batch_size=0", "eval.batch_size=0: must be a whole number >= 1"),
    ("eval.num_samples=-5", "eval.num_samples=-5: must be a whole number >= 0"),
    ("trainer.num_iterations=2 trainer.save_steps=25", "trainer.save_steps=25: must be a multiple of 2"),
    ("cpu_threads=0", "cpu_threads=0: must be a whole number >= 1"),
    ("force_mode=always", "force_mode='always': must be null (the model chooses), think or direct"),
    ("reward.adaptive_think.weight=0", None),  # with format at 0.5: still fine
]


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_each_bad_value_is_a_config_error(override, message):
    cfg = _compose(override.split())
    if message is None:
        check_train_config(cfg)
        return
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_defaults_pass():
    check_train_config(_compose())
    for model in ("qwen2_audio_7b", "qwen2_5_omni_7b"):
        check_train_config(_compose([f"model={model}"]))


def test_every_weight_zero_is_a_dead_run():
    with pytest.raises(ConfigError, match=r"every weight is 0 \(adaptive_think, format, accuracy\)"):
        check_train_config(_compose(["reward.adaptive_think.weight=0", "reward.format.weight=0"]))
    check_train_config(_compose(["reward=full"]))  # weights 0, but the formula is the reward


def test_a_data_set_smaller_than_one_step():
    cfg = _compose()
    check_dataset_size(16, cfg.trainer)  # 128 completions / G 8 = 16 prompts
    with pytest.raises(ConfigError, match="has 15 usable row\\(s\\), fewer than the 16 prompts of one step"):
        check_dataset_size(15, cfg.trainer)


def _cli(module, args, tmp_path):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    return out, time.time() - t0


@pytest.mark.parametrize("override", ["trainer.beta=-0.04", "trainer.num_generations=6"])
def test_train_cli_stops_at_once_with_one_line_and_exit_2(override, tmp_path):
    out, seconds = _cli("audiothink.train", [override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer."), lines
    assert "data:" not in out.stderr + out.stdout and "model:" not in out.stderr + out.stdout  # nothing loaded
    assert not (tmp_path / "cache").exists()  # not even the toy data set was built
    assert not (tmp_path / "run").exists()  # and no stub run folder is left behind
    assert seconds < 60


def test_train_cli_stops_on_a_data_set_too_small_for_one_step(tmp_path, toy_files):
    rows = toy_files["train"].read_text().splitlines()[:3]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(rows).replace('"audio/', f'"{toy_files["train"].parent}/audio/') + "\n")
    out, _ = _cli("audiothink.train", ["data=jsonl", f"data.train={small}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert out.returncode == 2
    assert "the training set has 3 usable row(s), fewer than the 16 prompts of one step" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing trained: the new folder is removed again


@pytest.mark.parametrize("override, message", [
    ("eval.batch_size=0", "eval.batch_size=0: must be a whole number >= 1"),
    ("eval.listen_check=loud", "eval.listen_check='loud': must be null, noise or silence"),
    ("eval.force_mode=always", "eval.force_mode='always': must be null (the model chooses), think, direct or both"),
])
def test_evaluate_cli_stops_at_once(override, message, tmp_path):
    out, _ = _cli("audiothink.evaluate", [override, f"hydra.run.dir={tmp_path / 'ev'}"], tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_threads_sets_torchs_threads_before_anything_loads(threads, tmp_path, monkeypatch):
    """`cpu_threads` is applied at the start of train(), before the model path is even checked: one thread is
    what makes a CPU run repeat exactly (configs/train.yaml)."""
    import torch

    from audiothink import train

    before = torch.get_num_threads()
    monkeypatch.setattr(train, "check_model_path", lambda path: (_ for _ in ()).throw(ConfigError("stop here")))
    cfg = _compose([f"cpu_threads={threads}", f"output_dir={tmp_path}"])
    try:
        with pytest.raises(ConfigError, match="stop here"):
            train.train(cfg)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
