"""Checkpoint loading under the right names, strictly; which checkpoint a resume picks; epoch order on resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from audiothink.checkpoints import (
    CheckpointError,
    checkpoint_key_map,
    load_full_checkpoint,
    resume_checkpoint,
)
from audiothink.errors import ConfigError
from audiothink.setup import drop_replayed
from tests.conftest import load_toy


def _perturbed_copy(model):
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return saved


@pytest.mark.parametrize("which", ["toy", "omni"])
def test_full_checkpoint_loads_every_tensor_under_its_memory_name(which, toy_model_dir, omni_dir, tmp_path):
    if which == "toy":
        model, _ = load_toy(toy_model_dir)
    else:
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir)
    model.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    # the files use other names than the model in memory: the trap this module exists for
    assert set(on_disk).isdisjoint(model.state_dict())
    mapping = checkpoint_key_map(model)
    assert set(on_disk) <= set(mapping)  # the mapping also names tied copies save_pretrained drops
    saved = _perturbed_copy(model)
    n = load_full_checkpoint(model, tmp_path)
    assert n == len(on_disk)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_sharded_full_checkpoint_loads(toy_model_dir, tmp_path):
    model, _ = load_toy(toy_model_dir)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    saved = _perturbed_copy(model)
    load_full_checkpoint(model, tmp_path)
    assert all(torch.equal(t, saved[k]) for k, t in model.state_dict().items())


def test_a_checkpoint_of_another_model_is_an_error_not_a_warning(toy_model_dir, omni_dir):
    model, _ = load_toy(toy_model_dir)
    with pytest.raises(CheckpointError, match=r"missing .*unexpected"):
        load_full_checkpoint(model, omni_dir)


def test_one_extra_or_missing_tensor_is_an_error(toy_model_dir, tmp_path):
    model, _ = load_toy(toy_model_dir)
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    extra = dict(tensors, **{"audio_tower.extra.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 unexpected .*audio_tower\.extra\.weight"):
        load_full_checkpoint(model, tmp_path)
    fewer = {k: v for k, v in tensors.items() if not k.startswith("multi_modal_projector.linear.bias")}
    save_file(fewer, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing .*multi_modal_projector\.linear\.bias"):
        load_full_checkpoint(model, tmp_path)


def _checkpoint(run, step, complete=True):
    d = run / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    assert resume_checkpoint(tmp_path, False) is None
    with pytest.raises(ConfigError, match="resume=true: no complete checkpoint"):
        resume_checkpoint(tmp_path, True)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)  # killed while saving
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(tmp_path, True) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-12" in caplog.text
    assert resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-99"))
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-12"))


def test_replayed_records_are_dropped(tmp_path):
    ckpt = _checkpoint(tmp_path, 4)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s}) + "\n" for s in range(1, 8))
                                            + '{"step": 8, "rew')  # cut by the kill
    (tmp_path / "completions.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 5, 5)))
    assert drop_replayed(tmp_path, ckpt) == {"metrics.jsonl": 4, "completions.jsonl": 2}
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert [json.loads(x)["step"] for x in (tmp_path / "completions.jsonl").read_text().splitlines()] == [1]


def test_every_epoch_draws_the_uninterrupted_order_after_a_resume(toy_model_dir, toy_files, tmp_path):
    """TRL's sampler advances one generator pass after pass; a resumed run (a fresh sampler) must not replay
    epoch 0's order in a later epoch. Driven the way the Trainer drives it: set_epoch, skip_first_batches."""
    from accelerate import skip_first_batches
    from trl.trainer.utils import RepeatSampler

    from tests.test_trainer import _trainer

    trainer = _trainer(toy_model_dir, toy_files, tmp_path, lora=False, num_iterations=1)
    reference = RepeatSampler(trainer.train_dataset, mini_repeat_count=trainer.num_generations,
                              batch_size=trainer.args.generation_batch_size // trainer.num_generations,
                              repeat_count=1, seed=trainer.args.seed)
    uninterrupted = [list(reference) for _ in range(3)]  # the order of epochs 0, 1, 2 in one run

    def ids(loader):
        return [row["id"] for batch in loader for row in batch]  # TRL collates rows as a list

    index_of = {row_id: i for i, row_id in enumerate(trainer.train_dataset["id"])}
    for epoch in (2, 1, 0):  # a fresh loader per epoch, in any order: as a resume would see it
        loader = trainer.get_train_dataloader()
        loader.set_epoch(epoch)
        assert [index_of[i] for i in ids(loader)] == uninterrupted[epoch], epoch
    # resumed in the middle of epoch 1: the Trainer skips the finished batches of that epoch
    loader = skip_first_batches(trainer.get_train_dataloader(), 1)
    loader.set_epoch(1)
    per_batch = trainer.args.generation_batch_size
    assert [index_of[i] for i in ids(loader)] == uninterrupted[1][per_batch:]
