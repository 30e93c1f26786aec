"""Checkpoint loading under the right names, strictly; which checkpoint a resume picks; epoch order on resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from audiothink.plumbing.checkpoints import (
    CheckpointError,
    check_resume_processes,
    checkpoint_key_map,
    checkpoint_processes,
    load_full_checkpoint,
    resume_checkpoint,
)
from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.runfiles import drop_replayed
from tests.helpers import load_toy, toy_cache


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


def test_train_loss_of_a_resumed_run_is_the_mean_over_all_its_steps(tmp_path):
    """transformers' end-of-run train_loss after a resume divides only the resumed steps' losses by every
    step; metrics.jsonl's record holds the mean over all steps instead (logging windows weighted)."""
    import json
    from types import SimpleNamespace

    from audiothink.plumbing.runfiles import JsonlMetrics

    path = tmp_path / "metrics.jsonl"
    # the interrupted run logged steps 2 and 4 (windows of 2 steps); the resume logs 6 and 7, then the summary
    path.write_text(json.dumps({"step": 2, "loss": 1.0}) + "\n" + json.dumps({"step": 4, "loss": 3.0}) + "\n")
    cb = JsonlMetrics(path, resumed=True)
    state = SimpleNamespace(is_world_process_zero=True, global_step=6)
    cb.on_log(None, state, None, logs={"loss": 5.0})
    state.global_step = 7
    cb.on_log(None, state, None, logs={"loss": 7.0})
    cb.on_log(None, state, None, logs={"train_loss": 1.7, "train_runtime": 3.0})  # what transformers computed
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["train_loss"] == (1.0 * 2 + 3.0 * 2 + 5.0 * 2 + 7.0 * 1) / 7
    assert last["train_runtime"] == 3.0
    # an uninterrupted run keeps transformers' own figure
    fresh = JsonlMetrics(tmp_path / "fresh.jsonl")
    fresh.on_log(None, state, None, logs={"train_loss": 1.7})
    assert json.loads((tmp_path / "fresh.jsonl").read_text())["train_loss"] == 1.7


# -- another run's checkpoint; damaged files; full disk while saving; LoRA targets (issue 17) ----------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _train_cli(args, tmp_path, timeout=300):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(toy_cache(tmp_path)),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", "audiothink.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_another_runs_checkpoint_into_a_run_folder_is_refused_before_anything_is_written(tmp_path):
    """resume=<a checkpoint of run B> in run A's folder would drop A's later records and overwrite its checkpoints
    and final/ with B's training: one line naming both folders and the supported ways, exit 2, A untouched."""
    import time

    a, b = tmp_path / "a", tmp_path / "b"
    _checkpoint(a, 4)
    (a / "config.yaml").write_text("run a\n")
    (a / "metrics.jsonl").write_text('{"step": 4}\n{"step": 5}\n')
    theirs = _checkpoint(b, 2)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in a.rglob("*")}
    t0 = time.time()
    out = _train_cli([f"hydra.run.dir={a}", f"resume={theirs}", "eval.num_samples=0"], tmp_path)
    seconds = time.time() - t0
    err = out.stderr.strip()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: resume=") and "Traceback" not in err, err
    assert f"run folder {b}" in err and f"this run's folder {a}" in err
    assert f"hydra.run.dir={b}" in err and f"model.path={theirs}" in err  # the ways that are supported
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in a.rglob("*")} == before  # no .hydra/, no log
    assert "data:" not in out.stdout + out.stderr and "model:" not in out.stdout + out.stderr  # nothing loaded
    assert seconds < 120  # python's imports only (~15 s on an idle 2-core CPU)


def test_only_the_main_process_judges_whose_checkpoint_it_is(tmp_path, monkeypatch):
    """The other processes of a launch look at the folder later, after the main one wrote its config.yaml into
    the new (branch) folder: they follow the main process, which refuses for all."""
    from audiothink.plumbing.checkpoints import check_resume_owner

    theirs = _checkpoint(tmp_path / "b", 2)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setenv("RANK", "1")
    check_resume_owner(tmp_path / "a", str(theirs))
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="not of this run's folder"):
        check_resume_owner(tmp_path / "a", str(theirs))


def test_another_runs_checkpoint_rules(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    mine, theirs = _checkpoint(a, 4), _checkpoint(b, 2)
    assert resume_checkpoint(a, str(mine)) == str(mine)  # this run's own checkpoint, by path
    assert resume_checkpoint(a, str(a / ".." / "a" / "checkpoint-4")) == str(a / ".." / "a" / "checkpoint-4")
    # a new (or empty) folder may branch another run: nothing of a run is there to lose
    assert resume_checkpoint(tmp_path / "new", str(theirs)) == str(theirs)
    (tmp_path / "empty").mkdir()
    assert resume_checkpoint(tmp_path / "empty", str(theirs)) == str(theirs)
    # a folder with a run's files is another run, whatever it holds of them
    for name in ("config.yaml", "metrics.jsonl", "checkpoint-1", "final"):
        other = tmp_path / f"with-{name}"
        (other / name).mkdir(parents=True) if "." not in name else (other.mkdir(), (other / name).write_text("x"))
        with pytest.raises(ConfigError, match=rf"a checkpoint of run folder {b}, not of this run's folder"):
            resume_checkpoint(other, str(theirs))
    # a branch started again (its first start's config.yaml resumed from that checkpoint) is the same run
    branch = tmp_path / "branch"
    branch.mkdir()
    (branch / "config.yaml").write_text(f"seed: 0\nresume: {theirs}\n")
    assert resume_checkpoint(branch, str(theirs)) == str(theirs)
    (branch / "config.yaml").write_text(f"seed: 0\nresume: {mine}\n")
    with pytest.raises(ConfigError, match="not of this run's folder"):
        resume_checkpoint(branch, str(theirs))
    # a LoRA checkpoint holds no full weights: model.path is not offered for it
    (theirs / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        resume_checkpoint(a, str(theirs))
    assert "model.path" not in str(e.value)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real 2-step full fine-tuning run of the toy with a checkpoint at each step."""
    tmp = tmp_path_factory.mktemp("ckpt-run")
    out = _train_cli([f"hydra.run.dir={tmp / 'run'}", "trainer.max_steps=2", "trainer.save_steps=1",
                      "trainer.logging_steps=1", "trainer.per_device_train_batch_size=16",
                      "trainer.max_completion_length=8", "trainer.report_to=[]", "eval.num_samples=0",
                      "log.plots=false"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run", symlinks=True)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _nan_weights(path):
    tensors = load_file(str(path))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()},
              str(path), metadata={"format": "pt"})


@pytest.mark.e2e
def test_a_checkpoint_resumes_only_under_the_process_count_that_saved_it(real_run):
    # the count is read from the Trainer's RNG files (rng_state.pth: 1 process; rng_state_<rank>.pth: N); the
    # launches themselves: tests/e2e/test_resume_processes.py
    ckpt = real_run / "checkpoint-1"
    assert checkpoint_processes(ckpt) == 1
    check_resume_processes(ckpt, 1)
    with pytest.raises(ConfigError, match=r"saved by 1 process, and this launch has 2 processes: .*resume without a "
                                          r"launcher"):
        check_resume_processes(ckpt, 2)


@pytest.mark.e2e
@pytest.mark.parametrize("name, damage, what", [
    ("model.safetensors", _nan_weights, r"not finite \(NaN or inf in \d+ of \d+ tensors"),
    ("model.safetensors", _truncate, r"truncated \(\d+ of \d+ bytes\)"),
    ("model.safetensors", lambda p: _truncate(p, 0.0), r"truncated or damaged"),
    ("optimizer.pt", _truncate, "truncated or damaged"),
    ("scheduler.pt", _truncate, "truncated or damaged"),
    ("rng_state.pth", _truncate, "truncated or damaged"),
    ("trainer_state.json", _truncate, "not valid JSON, truncated or damaged"),
    # without them the Trainer restores neither and Adam starts again from zero moments, with no message
    ("optimizer.pt", lambda p: p.unlink(), r"missing \(a resume restores the optimizer"),
    ("scheduler.pt", lambda p: p.unlink(), r"missing \(a resume restores the optimizer"),
])
def test_a_damaged_checkpoint_file_is_one_line_naming_it_and_the_checkpoint_before(real_run, tmp_path, name, damage,
                                                                                    what):
    run = _copy(real_run, tmp_path)
    damage(run / "checkpoint-2" / name)
    with pytest.raises(ConfigError) as e:
        resume_checkpoint(run, True)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'checkpoint-2' / name}: "), msg
    assert __import__("re").search(what, msg), msg
    assert "\n" not in msg and msg.endswith(f"the newest sound checkpoint before it is checkpoint-1: "
                                            f"resume={run / 'checkpoint-1'}")
    # given by path: the same check; the earlier checkpoint is sound and resumes
    with pytest.raises(ConfigError, match=__import__("re").escape(f"{run / 'checkpoint-2' / name}: ")):
        resume_checkpoint(run, str(run / "checkpoint-2"))
    assert resume_checkpoint(run, str(run / "checkpoint-1")) == str(run / "checkpoint-1")


@pytest.mark.e2e
def test_no_sound_checkpoint_left_says_so(real_run, tmp_path):
    run = _copy(real_run, tmp_path)
    for step in (1, 2):
        _truncate(run / f"checkpoint-{step}" / "optimizer.pt")
    with pytest.raises(ConfigError, match=r"checkpoint-2/optimizer\.pt: truncated .*no earlier sound checkpoint"):
        resume_checkpoint(run, True)


@pytest.mark.e2e
def test_a_file_without_read_permission_is_unreadable_not_corrupt(real_run, tmp_path, monkeypatch):
    """Run as root, a chmod 000 file stays readable: the permission error is mocked at open()."""
    import builtins
    import errno

    run = _copy(real_run, tmp_path)
    locked = run / "checkpoint-2" / "optimizer.pt"
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(ConfigError) as e:
        resume_checkpoint(run, True)
    assert str(e.value).startswith(f"{locked}: unreadable: permission denied;"), str(e.value)
    assert "truncated" not in str(e.value) and "damaged" not in str(e.value)


@pytest.mark.e2e
def test_a_checkpoint_with_nan_weights_stops_the_resume_before_anything_loads(real_run, tmp_path):
    """End to end: exit 2 with one line, no traceback (it used to fail at the first rollout: "probability tensor
    contains either inf, nan or element < 0"), nothing trained or rewritten."""
    run = _copy(real_run, tmp_path)
    _nan_weights(run / "checkpoint-2" / "model.safetensors")
    metrics = (run / "metrics.jsonl").read_text()
    out = _train_cli([f"hydra.run.dir={run}", "resume=true", "trainer.max_steps=3", "trainer.save_steps=1",
                      "trainer.logging_steps=1", "trainer.per_device_train_batch_size=16",
                      "trainer.max_completion_length=8", "trainer.report_to=[]", "eval.num_samples=0",
                      "log.plots=false"], tmp_path)
    err = out.stderr.strip()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {run / 'checkpoint-2' / 'model.safetensors'}: not finite"), err
    assert "data:" not in out.stdout + out.stderr and "training:" not in out.stdout + out.stderr
    assert (run / "metrics.jsonl").read_text() == metrics and not (run / "checkpoint-3").exists()


def _toy_trainer(toy_model_dir, toy_files, tmp_path, peft_config=None, **args):
    from audiothink.plumbing.runfiles import SaveProcessor
    from audiothink.trainer import AudioGRPOTrainer
    from audiothink.rewards import Accuracy, Format
    from tests.helpers import toy_grpo_args
    from tests.test_trainer import _dataset

    model, processor = load_toy(toy_model_dir)
    return AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format(), Accuracy()],
        args=toy_grpo_args(tmp_path, **({"max_steps": 1, "save_strategy": "steps", "save_steps": 1} | args)),
        train_dataset=_dataset(toy_files), peft_config=peft_config, max_audio_seconds=2.0,
        callbacks=[SaveProcessor(processor)],
    )


def _fail_at(monkeypatch, trainer, where):
    """Make one writer of the checkpoint fail the way a full disk makes it fail."""
    import errno
    import shutil
    from collections import namedtuple

    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "torch.save":  # torch's C++ writer hides the reason: the free space tells it
        import transformers.trainer as hf_trainer

        real = hf_trainer.torch.save

        def save(obj, f, *a, **k):
            if str(f).endswith("optimizer.pt"):
                raise RuntimeError("basic_ios::clear: iostream error")
            return real(obj, f, *a, **k)

        monkeypatch.setattr(hf_trainer.torch, "save", save)
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - 4096, 4096))
    elif where == "weights":
        def save_model(*a, **k):
            raise full
        monkeypatch.setattr(trainer, "save_model", save_model)
    elif where == "processor":  # after trainer_state.json: the Trainer's own files all there
        def save_pretrained(*a, **k):
            raise full
        monkeypatch.setattr(trainer.processing_class, "save_pretrained", save_pretrained)
    elif where == "fsync":  # a file system that reports the full disk only when the data is flushed
        import os

        real_fsync = os.fsync

        def fsync(fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("model.safetensors"):
                raise full
            return real_fsync(fd)
        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("where", ["torch.save", "weights", "processor", "fsync"])
def test_a_full_disk_while_saving_is_one_line_and_leaves_the_checkpoint_incomplete(toy_model_dir, toy_files, tmp_path,
                                                                                   monkeypatch, where):
    trainer = _toy_trainer(toy_model_dir, toy_files, tmp_path)
    _fail_at(monkeypatch, trainer, where)
    with pytest.raises(ConfigError) as e:
        trainer.train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    msg = str(e.value)
    assert msg.startswith(f"{ckpt}: No space left on device while saving the checkpoint"), msg
    assert "\n" not in msg and "iostream" not in msg
    monkeypatch.undo()
    assert ckpt.is_dir()
    with pytest.raises(ConfigError, match=r"no complete checkpoint .*1 incomplete: \['checkpoint-1'\]"):
        resume_checkpoint(tmp_path / "run", True)
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resume_checkpoint(tmp_path / "run", str(ckpt))


def test_a_save_that_succeeds_leaves_exactly_the_trainers_files(toy_model_dir, toy_files, tmp_path):
    trainer = _toy_trainer(toy_model_dir, toy_files, tmp_path)
    trainer.train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    assert resume_checkpoint(tmp_path / "run", True) == str(ckpt)
    names = sorted(p.name for p in ckpt.iterdir())
    assert not any(n.startswith(".") for n in names), names  # the marker is gone
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "processor_config.json"} <= set(names)


def test_an_error_that_is_not_a_full_disk_keeps_its_traceback(toy_model_dir, toy_files, tmp_path, monkeypatch):
    import transformers.trainer as hf_trainer

    trainer = _toy_trainer(toy_model_dir, toy_files, tmp_path)

    def save(*a, **k):
        raise RuntimeError("basic_ios::clear: iostream error")  # with plenty of space: not a full disk

    monkeypatch.setattr(hf_trainer.torch, "save", save)
    with pytest.raises(RuntimeError, match="iostream error") as e:
        trainer.train()
    assert not isinstance(e.value, ConfigError)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resume_checkpoint(tmp_path / "run", True)


@pytest.mark.parametrize("change", ["targets", "rank"])
def test_a_lora_resume_checks_the_saved_adapter_against_the_models_targets(toy_model_dir, toy_files, tmp_path,
                                                                            change):
    """The adapter of a LoRA checkpoint must match the LoRA the run builds: other target modules would load
    partly (PEFT only warns), another rank not at all."""
    from peft import LoraConfig

    qv = r"^model\.language_model\..*\.(q_proj|v_proj)$"
    saved = _toy_trainer(toy_model_dir, toy_files, tmp_path / "a",
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=qv, task_type="CAUSAL_LM"))
    saved.train()
    ckpt = tmp_path / "a" / "run" / "checkpoint-1"
    other = LoraConfig(r=4 if change == "targets" else 8, lora_alpha=8, task_type="CAUSAL_LM",
                       target_modules=r"^model\.language_model\..*\.q_proj$" if change == "targets" else qv)
    resumed = _toy_trainer(toy_model_dir, toy_files, tmp_path / "b", peft_config=other)
    with pytest.raises(CheckpointError, match="the adapter does not match the model") as e:
        resumed._load_from_checkpoint(str(ckpt))
    assert ("unexpected" if change == "targets" else "another shape") in str(e.value)
    same = _toy_trainer(toy_model_dir, toy_files, tmp_path / "c",
                        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=qv, task_type="CAUSAL_LM"))
    same._load_from_checkpoint(str(ckpt))  # the same LoRA loads


QV = r"^model\.language_model\..*\.(q_proj|v_proj)$"


@pytest.fixture(scope="module")
def lora_run(toy_model_dir, toy_files, tmp_path_factory):
    """A 1-step LoRA run (r=4, alpha=8, q/v projections) with its checkpoint."""
    from peft import LoraConfig

    tmp = tmp_path_factory.mktemp("lora-run")
    _toy_trainer(toy_model_dir, toy_files, tmp,
                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=QV, task_type="CAUSAL_LM")).train()
    return tmp / "run"


def test_a_truncated_adapter_is_one_line_naming_it(lora_run, tmp_path):
    run = _copy(lora_run, tmp_path)
    _truncate(run / "checkpoint-1" / "adapter_model.safetensors", 0.7)
    with pytest.raises(ConfigError, match=r"checkpoint-1/adapter_model\.safetensors: truncated \(\d+ of \d+ bytes\)"):
        resume_checkpoint(run, True)


@pytest.mark.e2e
def test_the_checkpoints_lora_must_be_model_lora_before_anything_loads(lora_run, real_run):
    from omegaconf import OmegaConf

    from audiothink.plumbing.checkpoints import check_resume_adapter

    ckpt = lora_run / "checkpoint-1"

    def lora(**kw):
        return OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": QV} | kw)

    check_resume_adapter(ckpt, lora())  # the run's own LoRA
    check_resume_adapter(ckpt, lora(dropout=0.1))  # dropout shapes no tensor and no output
    with pytest.raises(ConfigError, match=r"trained with r=4, this run's model\.lora has r=8"):
        check_resume_adapter(ckpt, lora(r=8))
    with pytest.raises(ConfigError, match=r"trained with alpha=8\.0, this run's model\.lora has alpha=16\.0"):
        check_resume_adapter(ckpt, lora(alpha=16))
    with pytest.raises(ConfigError, match=r"target_modules="):
        check_resume_adapter(ckpt, lora(target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ConfigError, match=r"a LoRA checkpoint .*model\.lora=null"):
        check_resume_adapter(ckpt, None)
    with pytest.raises(ConfigError, match=r"a full fine-tuning checkpoint .*model\.lora is set"):
        check_resume_adapter(real_run / "checkpoint-2", lora())
    check_resume_adapter(real_run / "checkpoint-2", None)


@pytest.mark.e2e
def test_a_resume_with_another_lora_stops_in_one_line_before_loading(lora_run, tmp_path):
    run = _copy(lora_run, tmp_path)
    out = _train_cli([f"hydra.run.dir={run}", "resume=true", "model=toy_lora", "trainer.max_steps=2",
                      "eval.num_samples=0", "log.plots=false"], tmp_path)
    err = out.stderr.strip()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: resume={run / 'checkpoint-1'}: its adapter was trained with r=4, alpha=8.0"), err
    assert "training:" not in out.stdout + out.stderr and "model:" not in out.stdout + out.stderr


@pytest.mark.e2e
def test_a_checkpoint_that_does_not_match_the_model_is_one_line_not_a_traceback(real_run, tmp_path):
    """Found only when the weights load (after the model): still one line and exit 2, the run folder kept."""
    run = _copy(real_run, tmp_path)
    weights = run / "checkpoint-2" / "model.safetensors"
    save_file(dict(load_file(str(weights)), **{"audio_tower.extra.weight": torch.zeros(2)}), str(weights),
              metadata={"format": "pt"})
    out = _train_cli([f"hydra.run.dir={run}", "resume=true", "trainer.max_steps=3", "trainer.save_steps=1",
                      "trainer.logging_steps=1", "trainer.per_device_train_batch_size=16",
                      "trainer.max_completion_length=8", "trainer.report_to=[]", "eval.num_samples=0",
                      "log.plots=false"], tmp_path)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(err) == 1, out.stderr[-3000:]
    assert "the checkpoint does not match the model: 1 unexpected" in err[0]
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-3").exists()


def test_a_mixture_of_experts_checkpoint_loads_its_per_expert_tensors_into_the_fused_ones(qwen3_omni_dir, tmp_path):
    """Qwen3-Omni's thinker keeps each layer's experts fused in memory and saves them one expert at a time: the
    resume of a full fine-tuning run puts every element back (a rename map alone cannot)."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(qwen3_omni_dir)
    model.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.mlp.experts.3.up_proj.weight" in on_disk  # per expert on disk
    assert "model.language_model.layers.0.mlp.experts.gate_up_proj" in model.state_dict()  # fused in memory
    with pytest.raises(NotImplementedError, match="converted, not renamed"):
        checkpoint_key_map(model)
    saved = _perturbed_copy(model)
    assert load_full_checkpoint(model, tmp_path) == len(on_disk)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    # one expert's tensor missing: an error naming the fused weight it belongs to
    from safetensors.torch import save_file

    del on_disk["model.layers.1.mlp.experts.2.down_proj.weight"]
    save_file(on_disk, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing .*layers\.1\.mlp\.experts\.down_proj"):
        load_full_checkpoint(model, tmp_path)


def test_a_resolved_target_list_resumes_under_the_regex_it_came_from(tmp_path):
    """A mixture of experts' adapter lists the modules its regex matched (audiothink.loading.build_peft_config
    resolves it for PEFT): the run's own model.lora regex accepts it; a regex that misses one of them does not."""
    from omegaconf import OmegaConf

    from audiothink.plumbing.checkpoints import check_resume_adapter

    names = [f"model.language_model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": names}))

    def lora(target):
        return OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": target})

    check_resume_adapter(tmp_path, lora(r"^model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)$"))
    with pytest.raises(CheckpointError, match="target_modules"):
        check_resume_adapter(tmp_path, lora(r"^model\.language_model\.layers\.\d+\.self_attn\.q_proj$"))
