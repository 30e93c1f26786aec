"""Batch-wide rewards see the whole gathered batch: two ranks, simulated gather, one global λ."""

from __future__ import annotations

import math

import pytest
import torch

from audiothink.reward_api import score_batch_wide
from audiothink.rewards import AdaptiveThink
from audiothink.rewards.adaptive_think import adaptive_value
from tests.test_trainer import _trainer

THINK_RIGHT = "<think>the first tone is higher</think><answer>first</answer>"
THINK_WRONG = "<think>the second tone is higher</think><answer>second</answer>"
DIRECT_RIGHT = "<answer>first</answer>"
DIRECT_WRONG = "<answer>second</answer>"


def _rows(n):
    return [
        {"prompt": "which tone is higher?", "answer": "first", "choices": ["first", "second"], "id": f"r{i}"}
        for i in range(n)
    ]


def test_score_batch_wide_uses_everything_it_is_given():
    rank0 = [THINK_RIGHT, THINK_WRONG]  # rank 0 alone: λ = 1
    rank1 = [DIRECT_RIGHT, DIRECT_WRONG]  # rank 1 alone: λ = 0
    gathered = rank0 + rank1
    cols = {"answer": ["first"] * 4, "choices": [["first", "second"]] * 4}
    out = score_batch_wide({0: AdaptiveThink()}, ["adaptive_think"], gathered, cols, {})[0]
    lam = 0.5
    assert out == pytest.approx(
        [
            adaptive_value(True, True, lam, 0.0),
            adaptive_value(True, False, lam, 0.0),
            adaptive_value(False, True, lam, 0.0),
            adaptive_value(False, False, lam, 0.0),
        ]
    )
    alone = AdaptiveThink()(rank0, answer=["first"] * 2, choices=[["first", "second"]] * 2)
    assert alone[0] == pytest.approx(math.exp(-1)) and out[0] == pytest.approx(math.exp(-0.5))


def test_score_batch_wide_rejects_wrong_length():
    with pytest.raises(ValueError, match="'bad' returned 1 values for a batch of 2"):
        score_batch_wide({0: lambda completions, **kw: [1.0]}, ["bad"], ["a", "b"], {}, {})


@pytest.mark.parametrize("rank", [0, 1])
def test_trainer_rewards_use_the_global_think_share(toy_model_dir, toy_files, tmp_path, monkeypatch, rank):
    """Simulate 2 ranks inside AudioGRPOTrainer._calculate_rewards: rank 0 holds only think completions,
    rank 1 only direct answers. Whichever rank computes, the adaptive reward uses λ = 0.5 for all rows."""
    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, max_steps=10)
    trainer.state.max_steps, trainer.state.global_step = 10, 0
    trainer.model.train()
    per_rank = {0: [THINK_RIGHT, THINK_WRONG, THINK_RIGHT, THINK_RIGHT], 1: [DIRECT_RIGHT, DIRECT_WRONG] * 2}
    rows = _rows(4)
    names = trainer.reward_func_names
    assert names == ["adaptive_think", "format", "accuracy"]

    def local_rewards(completions):
        # what the other rank's TRL pass produces: per-sample rewards, NaN for the deferred batch-wide one
        fmt = trainer.reward_funcs[1](completions)
        acc = trainer.reward_funcs[2](completions, answer=[r["answer"] for r in rows], choices=[r["choices"] for r in rows])
        return torch.tensor([[math.nan, f, a] for f, a in zip(fmt, acc)], dtype=torch.float32)

    def fake_gather(tensor):  # accelerate.gather: rank-ordered concatenation
        parts = {rank: tensor, 1 - rank: local_rewards(per_rank[1 - rank])}
        return torch.cat([parts[0], parts[1]])

    def fake_gather_object(obj):
        if obj == per_rank[rank]:
            return per_rank[0] + per_rank[1]
        return list(obj) + list(obj)  # every other column is the same on both simulated ranks

    monkeypatch.setattr("trl.trainer.grpo_trainer.gather", fake_gather)
    monkeypatch.setattr("audiothink.trainer.gather_object", fake_gather_object)
    # Every process-aware object reads one shared state: make this process rank `rank` of 2, so that code
    # which looks at its own slice of the gathered batch (PartialState().process_index) would find it.
    from accelerate.state import PartialState

    monkeypatch.setitem(PartialState._shared_state, "num_processes", 2)
    monkeypatch.setitem(PartialState._shared_state, "process_index", rank)
    assert (PartialState().num_processes, PartialState().process_index) == (2, rank)
    rewards = trainer._calculate_rewards(rows, [r["prompt"] for r in rows], per_rank[rank], [[1]] * 4)

    assert rewards.shape == (8, 3)
    correct = [True, False, True, True, True, False, True, False]
    thinks = [True] * 4 + [False] * 4
    expected = [adaptive_value(t, c, 0.5, 0.0) for t, c in zip(thinks, correct)]
    assert rewards[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert rewards[:, 1].tolist() == [1.0] * 8
    # λ = 1 (rank 0 alone) would have paid exp(-1) for a correct think: the global λ pays exp(-0.5)
    assert rewards[0, 0].item() == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert trainer._metrics["train"]["think/rate"][-1] == pytest.approx(0.5)


class _RecordingBatchWide:
    """A batch-wide reward that records what it was called with: ids and group ids of the gathered batch."""

    __name__ = "recorder"
    batch_wide = True

    def __init__(self):
        self.calls = []

    def __call__(self, completions, group_ids, id, **columns):
        self.calls.append({"group_ids": list(group_ids), "ids": list(id), "n": len(completions)})
        return [0.0] * len(completions)


def test_each_group_is_one_prompts_g_completions_in_a_real_step(toy_model_dir, toy_files, tmp_path):
    """A real GRPO step: the group ids a batch-wide reward receives cover each prompt's G completions, together.

    (A strided numbering, `i % n_groups`, would mix prompts in every group: the advantage of a completion would
    be measured against other prompts' completions.)"""
    from audiothink.trainer import AudioGRPOTrainer
    from audiothink.rewards import Format
    from tests.helpers import load_toy, toy_grpo_args
    from tests.test_trainer import _dataset

    model, processor = load_toy(toy_model_dir)
    recorder = _RecordingBatchWide()
    args = toy_grpo_args(tmp_path, max_steps=2, num_generations=4, per_device_train_batch_size=16)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format(), recorder], args=args,
                               train_dataset=_dataset(toy_files), max_audio_seconds=2.0)
    trainer.train()
    assert len(recorder.calls) == 2
    for call in recorder.calls:
        assert call["n"] == 16
        groups: dict[int, list[str]] = {}
        for g, row_id in zip(call["group_ids"], call["ids"]):
            groups.setdefault(g, []).append(row_id)
        assert sorted(groups) == [0, 1, 2, 3]
        for g, ids in groups.items():
            assert len(ids) == 4 and len(set(ids)) == 1, f"group {g} holds {ids}"
        assert len({ids[0] for ids in groups.values()}) == 4  # four different prompts
        # and contiguous: the rows of a group are next to each other, as TRL's advantage computation assumes
        assert call["group_ids"] == sorted(call["group_ids"])
