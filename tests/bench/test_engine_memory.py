"""bench/engine_memory.py: the README's memory-per-GPU table is the one computed from the architecture, and its
DeepSpeed rows agree with DeepSpeed's own estimators."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_bench_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("engine_memory")


@pytest.fixture(scope="module")
def counts(bench):
    return bench.parameter_counts()


def test_parameter_counts_of_qwen2_audio_7b(counts):
    # 8.4 B: the Qwen-7B decoder with its 156k vocabulary and untied head, the Whisper-large encoder, the projector
    assert counts["total"] == counts["language_model"] + counts["audio_encoder"] + counts["projector"]
    assert 8.3e9 < counts["total"] < 8.5e9 and 0.6e9 < counts["audio_encoder"] < 0.7e9
    # LoRA r = 16 on q, k, v, o, gate, up, down of 32 decoder layers (4096 wide, MLP 11008): r (in + out) each
    per_layer = 16 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))
    assert counts["lora"] == 32 * per_layer


def test_readme_table_is_the_computed_one(bench, counts):
    assert bench.table(8, counts) in (ROOT / "README.md").read_text()


def test_deepspeed_rows_are_deepspeeds_own_estimate(bench, counts):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total = counts["total"]
    _, zero2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=8, cpu_offload=False)
    assert bench.state_bytes("ZeRO-2", total, total, 8) == pytest.approx(zero2, abs=1)
    # ZeRO-3's estimate adds the largest layer, gathered in the update (not a model state: left out here)
    _, zero3, largest = estimate_zero3_model_states_mem_needs(total, 1, num_gpus_per_node=8, cpu_offload=False)
    assert bench.state_bytes("ZeRO-3", total, total, 8) == pytest.approx(zero3 - largest, abs=1)


def test_sharding_divides_by_the_gpus(bench, counts):
    total, lora = counts["total"], counts["lora"]
    for engine in ("ZeRO-3", "FSDP2"):
        assert bench.state_bytes(engine, total, lora, 16) == pytest.approx(bench.state_bytes(engine, total, lora, 8) / 2)
    # replicated weights: ZeRO-2 never goes below the bf16 model, DDP does not depend on N
    assert bench.state_bytes("ZeRO-2", total, total, 10**6) > 2 * total
    assert bench.state_bytes("DDP", total, lora, 8) == bench.state_bytes("DDP", total, lora, 64)
