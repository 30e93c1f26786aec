"""audiothink/plumbing/sharding.py without launching: what each launched engine needs on CPU processes, and the stop
when the engine that would train is not the launched one. The launches themselves: tests/e2e/test_sharded.py."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.sharding import check_engine, cpu_process_settings, launched_engine

ENGINE_VARS = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
               "ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "DS_ACCELERATOR", "LOCAL_RANK")


@pytest.fixture
def env(monkeypatch):
    for name in ENGINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    return monkeypatch


def _accelerator(distributed_type, *, fsdp_version=None, zero_stage=None):
    state = SimpleNamespace(
        distributed_type=distributed_type, backend="gloo",
        fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version), deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage),
    )
    return SimpleNamespace(state=state)


def test_launched_engine_is_read_from_the_launchers_environment(env):
    assert launched_engine() is None
    env.setenv("ACCELERATE_USE_FSDP", "true")
    env.setenv("FSDP_VERSION", "2")
    assert launched_engine() == "FSDP2"
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what the DeepSpeed launcher exports wins
    env.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert launched_engine() == "DeepSpeed ZeRO-3"


def test_cpu_settings_for_fsdp_and_ddp_mark_a_cpu_run_and_drop_bf16(env):
    env.setenv("ACCELERATE_USE_FSDP", "true")
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    env.setenv("LOCAL_RANK", "0")
    assert cpu_process_settings() == {}
    assert os.environ["ACCELERATE_USE_CPU"] == "true" and os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


def test_cpu_settings_for_deepspeed(env):
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    env.setenv("LOCAL_RANK", "1")
    # an explicit gloo backend: without it each process would believe it trains alone
    assert cpu_process_settings() == {"ddp_backend": "gloo"}
    assert os.environ["DS_ACCELERATOR"] == "cpu" and "ACCELERATE_USE_CPU" not in os.environ
    env.setenv("ACCELERATE_USE_CPU", "true")  # accelerate would then train without DeepSpeed
    with pytest.raises(ConfigError, match="DeepSpeed was launched on a run marked as CPU-only"):
        cpu_process_settings()


def test_cpu_settings_do_nothing_on_a_gpu(env):
    env.setattr("torch.cuda.is_available", lambda: True)
    env.setenv("ACCELERATE_USE_FSDP", "true")
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert cpu_process_settings() == {}
    assert "ACCELERATE_USE_CPU" not in os.environ and os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_a_run_that_would_train_with_another_engine_stops(env):
    env.setenv("ACCELERATE_USE_FSDP", "true")
    env.setenv("FSDP_VERSION", "2")
    # what accelerate 1.15 builds on a CPU process group launched with fsdp.yaml, left alone: plain DDP
    with pytest.raises(ConfigError, match=r"asked for FSDP2, but this run would train with plain data parallelism"):
        check_engine(_accelerator(DistributedType.MULTI_CPU))
    with pytest.raises(ConfigError, match="asked for FSDP2, but this run would train with FSDP1"):
        check_engine(_accelerator(DistributedType.FSDP, fsdp_version=1))
    check_engine(_accelerator(DistributedType.FSDP, fsdp_version=2))
    env.delenv("ACCELERATE_USE_FSDP")
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    env.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    with pytest.raises(ConfigError, match="asked for DeepSpeed ZeRO-2"):
        check_engine(_accelerator(DistributedType.MULTI_CPU))
    check_engine(_accelerator(DistributedType.DEEPSPEED, zero_stage=2))
    env.delenv("ACCELERATE_USE_DEEPSPEED")
    check_engine(_accelerator(DistributedType.MULTI_CPU))  # DDP asked, DDP trains
    with pytest.raises(ConfigError, match="asked for no sharded engine"):
        check_engine(_accelerator(DistributedType.FSDP, fsdp_version=2))
