"""Checkpoints: which one a resume starts from, and loading full-model weights back under the right names.

Why this module exists: transformers 5 writes checkpoints under the *hub* names (``language_model.model.…``,
``audio_tower.…``) while the model in memory uses its own names (``model.language_model.…``), and the
Trainer's resume loads a full (non-LoRA) checkpoint with ``load_state_dict(strict=False)``: every tensor is
"unexpected", every parameter "missing", and the run goes on from the *starting* weights with the restored
optimizer, after a warning (transformers issues #43701, #40187). Here the names are mapped with
transformers' own conversion table (the one ``save_pretrained`` applied, reverted) and any key left
missing or unexpected is an error.

A checkpoint is complete once its ``trainer_state.json`` exists (the Trainer writes it after the weights,
optimizer, scheduler and RNG states) and it holds no ``.audiothink-saving`` marker: the trainer writes the
marker into the folder before the save starts and removes it only after every file of the checkpoint (the
processor's too) is written and flushed to disk (:func:`begin_save`, :func:`end_save`). A run killed while
saving, or stopped by a full disk, leaves a newer, incomplete folder behind; ``resume=true`` skips it and says
so. A full disk while saving is one line naming the checkpoint and "No space left on device"
(:func:`disk_full_as_error`; torch's own words for it are ``basic_ios::clear: iostream error``).

A resume checks what it will load before anything loads (:func:`check_checkpoint_files`): every JSON file
parses, every safetensors file is as long as its header says and holds finite numbers, every torch file
(optimizer, scheduler, RNG states) has its zip directory. A damaged file is one line naming it, and the
newest earlier checkpoint that passes the same checks. No automatic fall-back: a damaged complete checkpoint
is a sign of a disk fault, and training on from an older one silently would throw away steps.

A checkpoint belongs to the run folder that holds it. ``resume=<checkpoint of another folder>`` into a folder
that already holds a run is refused (it would drop that run's later records and overwrite its checkpoints and
``final/``); into a new folder it branches the other run there.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink")

__all__ = ["CheckpointError", "CheckpointFileError", "complete_checkpoints", "resume_checkpoint", "checkpoint_step",
           "check_resume_owner", "check_checkpoint_files", "check_resume_adapter", "checkpoint_processes",
           "check_resume_processes", "resume_target", "begin_save", "end_save",
           "marked_save", "completing_saves",
           "disk_full_as_error", "checkpoint_key_map", "load_full_checkpoint", "check_adapter_checkpoint"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# in a checkpoint folder while it is being written (begin_save .. end_save): such a checkpoint is incomplete
SAVING = ".audiothink-saving"


class CheckpointError(ConfigError, RuntimeError):
    """A checkpoint whose tensors do not match the model (missing, unexpected or misshapen keys): a user error
    (a resume with another model or LoRA than the run's), one line and exit 2."""


class CheckpointFileError(ConfigError):
    """A checkpoint file that cannot be used (truncated, not finite, unreadable), another run's checkpoint, or a
    full disk while saving one: a user error (one line, exit 2), naming the file."""


def _step(path: Path) -> int:
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else -1


def _complete(folder: Path) -> bool:
    return (folder / TRAINER_STATE).is_file() and not (folder / SAVING).exists()


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders that are complete (a ``trainer_state.json``, no save in progress),
    oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step(p) >= 0]
    return sorted((p for p in found if _complete(p)), key=_step)


def _holds_a_run(folder: Path) -> list[str]:
    """What in ``folder`` a run wrote (its first start's config, records, checkpoints, final weights)."""
    if not folder.is_dir():
        return []
    own = ("config.yaml", "metrics.jsonl", "completions.jsonl", "final", "summary.json")
    return sorted(p.name for p in folder.iterdir() if p.name in own or _step(p) >= 0)


def _branched_from(run_dir: Path) -> Path | None:
    """The checkpoint of another folder this run folder's first start resumed from (its config.yaml), if any."""
    import yaml  # omegaconf's

    try:
        resume = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("resume")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    if resume is None or isinstance(resume, bool) or str(resume).lower() in ("true", "false", ""):
        return None
    return Path(os.path.abspath(Path(str(resume)).expanduser())).resolve()


def check_resume_owner(run_dir: str | os.PathLike, resume) -> None:
    """``resume=<path>`` of another run folder into one that already holds a run: CheckpointFileError.

    A checkpoint belongs to the folder that holds it. Resuming another folder's checkpoint here would drop this
    run's records after that step and overwrite its checkpoints and ``final/``; into a new (or empty) folder it
    branches the other run there, which is allowed, and so is starting that branch again (its first start's
    config.yaml names the same checkpoint). Checked before anything is loaded or written, by the main process
    only: the others of a multi-process launch follow it (they may look after it wrote config.yaml).
    """
    if resume is None or isinstance(resume, bool) or str(resume).lower() in ("true", "false", ""):
        return
    if int(os.environ.get("RANK", "0")) != 0:
        return
    path = Path(os.path.abspath(Path(str(resume)).expanduser()))
    run_dir = Path(run_dir)
    if not path.is_dir() or path.parent.resolve() == run_dir.resolve() or _branched_from(run_dir) == path.resolve():
        return
    found = _holds_a_run(run_dir)
    if found:
        shown = ", ".join(found[:3]) + (", …" if len(found) > 3 else "")
        weights = ("" if (path / "adapter_model.safetensors").is_file()  # a LoRA checkpoint: no full weights
                   else f", or start a new run from its weights with model.path={path}")
        raise CheckpointFileError(
            f"resume={resume}: a checkpoint of run folder {path.parent}, not of this run's folder {run_dir} "
            f"(which holds another run: {shown}); continue that run with hydra.run.dir={path.parent} "
            f"resume={path}, branch it into a new, empty hydra.run.dir=… with the same resume={path}{weights}"
        )


def resume_checkpoint(run_dir: str | os.PathLike, resume) -> str | None:
    """What ``resume`` (the config value) means for ``run_dir``: a checkpoint folder to start from, or None.

    ``false``/``null``: None. ``true``: the newest complete checkpoint of the run folder (incomplete, newer
    ones are skipped with a warning); none at all is a ConfigError. A path: that folder, which must be a
    complete checkpoint. Checked before anything is loaded.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("false", "")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        complete = complete_checkpoints(run_dir)
        partial = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p not in complete]
        if not complete:
            detail = f" ({len(partial)} incomplete: {sorted(p.name for p in partial)})" if partial else ""
            raise ConfigError(
                f"resume=true: no complete checkpoint in {run_dir}{detail}; "
                "start a new run (resume=false) or pass resume=<checkpoint folder>"
            )
        newest = complete[-1]
        skipped = [p.name for p in partial if _step(p) > _step(newest)]
        if skipped:
            log.warning("resume: skipping incomplete checkpoint(s) %s (no %s, or its save did not finish; the run "
                        "stopped while saving)", skipped, TRAINER_STATE)
        check_checkpoint_files(newest, earlier=complete[:-1])
        return str(newest)
    path = Path(str(resume)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"resume={resume!r}: no such checkpoint folder")
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"resume={resume!r}: not a complete checkpoint (no {TRAINER_STATE})")
    if (path / SAVING).exists():
        raise ConfigError(f"resume={resume!r}: not a complete checkpoint (its save did not finish: {SAVING} is "
                          "still there)")
    check_resume_owner(run_dir, resume)
    check_checkpoint_files(path, earlier=[p for p in complete_checkpoints(path.parent) if _step(p) < _step(path)])
    return str(path)


# -- what a resume loads: checked first --------------------------------------------------------------------


def _unreadable(path: Path, e: OSError) -> CheckpointFileError:
    why = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else (e.strerror or str(e)).lower()
    return CheckpointFileError(f"{path}: unreadable: {why}")


def _check_json(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise _unreadable(path, e) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointFileError(f"{path}: not valid JSON, truncated or damaged ({e})") from e


def _check_safetensors(path: Path) -> None:
    """As long as its header says, and every floating tensor finite."""
    from safetensors import safe_open

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(n).decode("utf-8")) if 0 < n <= size - 8 else None
    except OSError as e:
        raise _unreadable(path, e) from e
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{path}: truncated or damaged (no readable safetensors header; {size} bytes)")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CheckpointFileError(f"{path}: truncated ({size} of {expected} bytes)")
    bad = []
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(name)
    except OSError as e:
        raise _unreadable(path, e) from e
    except Exception as e:  # noqa: BLE001 - safetensors' own error type: a header that does not fit the data
        raise CheckpointFileError(f"{path}: damaged ({type(e).__name__}: {e})") from e
    if bad:
        raise CheckpointFileError(f"{path}: not finite (NaN or inf in {len(bad)} of {len(ends)} tensors, first: "
                                  f"{bad[0]})")


def _check_torch_file(path: Path) -> None:
    """torch.save's zip format: truncation loses the zip directory at the end of the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != b"PK\x03\x04":
                if path.stat().st_size == 0:
                    raise CheckpointFileError(f"{path}: truncated (empty)")
                return  # torch's legacy format: no cheap check
            with zipfile.ZipFile(f) as z:
                z.infolist()
    except OSError as e:
        raise _unreadable(path, e) from e
    except zipfile.BadZipFile as e:
        raise CheckpointFileError(f"{path}: truncated or damaged ({e})") from e


# weight files of a checkpoint in the Trainer's own layout, which then also holds the optimizer and scheduler
_WEIGHT_FILES = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors"}
_OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")


def _damage(folder: Path) -> CheckpointFileError | None:
    """The first problem of a checkpoint's files, or None."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        return _unreadable(folder, e)
    names = {p.name for p in files}
    sharded = any(p.is_dir() and p.name.startswith(("global_step", "optimizer_", "pytorch_model_fsdp"))
                  for p in folder.iterdir())
    if not sharded and (names & _WEIGHT_FILES or any(n.startswith("model-") and n.endswith(".safetensors")
                                                     for n in names)):
        # the Trainer's own layout (one process, DDP): without these a resume restores neither and Adam starts
        # again from zero moments, silently (a sharded engine keeps them in its own sub-folders)
        for need in _OPTIMIZER_FILES:
            if need not in names:
                return CheckpointFileError(f"{folder / need}: missing (a resume restores the optimizer and the "
                                           "learning-rate schedule from it)")
    for path in files:  # the cheap checks first
        try:
            if path.suffix == ".json":
                _check_json(path)
        except CheckpointFileError as e:
            return e
    for path in files:
        try:
            if path.suffix == ".safetensors":
                _check_safetensors(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                _check_torch_file(path)
        except CheckpointFileError as e:
            return e
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        int(state["global_step"])
    except (KeyError, TypeError, ValueError) as e:
        return CheckpointFileError(f"{folder / TRAINER_STATE}: no global_step ({e!r})")
    return None


def check_checkpoint_files(folder: str | os.PathLike, earlier: list[Path] = ()) -> None:
    """Raise CheckpointFileError naming the first damaged file of ``folder`` (see the module notes), with the
    newest of the ``earlier`` complete checkpoints that passes the same checks, to resume from instead."""
    folder = Path(folder)
    problem = _damage(folder)
    if problem is None:
        return
    sound = next((p for p in sorted(earlier, key=_step, reverse=True) if _damage(p) is None), None)
    hint = (f"; the newest sound checkpoint before it is {sound.name}: resume={sound}" if sound is not None
            else "; no earlier sound checkpoint in this run: start a new run (resume=false)")
    raise CheckpointFileError(f"{problem}{hint}") from problem


def check_resume_adapter(folder: str | os.PathLike, lora_cfg) -> None:
    """The checkpoint's LoRA (its ``adapter_config.json``) must be the one ``model.lora`` builds: same rank, alpha
    and target modules; a LoRA checkpoint for a full fine-tuning run, or the reverse, is refused. Before any load
    (the tensors are checked again when they load: :func:`check_adapter_checkpoint`)."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if lora_cfg is None:
        if config.is_file():
            raise CheckpointError(f"resume={folder}: a LoRA checkpoint (it holds an adapter), but model.lora=null "
                                  "(full fine-tuning): resume with the run's own model.lora (see its config.yaml)")
        return
    if not config.is_file():
        if any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
            raise CheckpointError(f"resume={folder}: a full fine-tuning checkpoint (no adapter), but model.lora is "
                                  "set: resume with model.lora=null, as the run was trained")
        return  # a sharded engine's own layout
    saved = json.loads(config.read_text(encoding="utf-8"))

    def targets(t):
        return t if isinstance(t, str) or t is None else sorted(t)

    want = {"r": int(lora_cfg.r), "alpha": float(lora_cfg.alpha), "target_modules": targets(
        lora_cfg.target_modules if isinstance(lora_cfg.target_modules, str) else list(lora_cfg.target_modules))}
    have = {"r": saved.get("r"), "alpha": float(saved.get("lora_alpha", "nan")),
            "target_modules": targets(saved.get("target_modules"))}

    def same(key) -> bool:
        # a regex that audiothink.loading.build_peft_config resolved to module names for PEFT (a mixture of
        # experts): the adapter's list is the regex's matches; the tensors are checked again when they load
        if key == "target_modules" and isinstance(want[key], str) and isinstance(have[key], list) and have[key]:
            return all(re.fullmatch(want[key], name) for name in have[key])
        return want[key] == have[key]

    diff = [k for k in want if not same(k)]
    if diff:
        def show(d):
            return ", ".join(f"{k}={d[k]!r}" for k in diff)

        raise CheckpointError(f"resume={folder}: its adapter was trained with {show(have)}, this run's model.lora "
                              f"has {show(want)}: resume with the run's own model.lora (see its config.yaml), or "
                              "start a new run")


def checkpoint_processes(folder: str | os.PathLike) -> int | None:
    """The number of processes that saved the checkpoint ``folder``, from the RNG states the Trainer writes into
    every checkpoint: ``rng_state.pth`` for one process, ``rng_state_<rank>.pth`` for each of N > 1 (any engine:
    DDP, FSDP, DeepSpeed). None when it holds no RNG state (not the Trainer's checkpoint, or its files are gone)."""
    folder = Path(folder)
    ranks = [int(m.group(1)) for p in folder.glob("rng_state_*.pth")
             if (m := re.match(r"^rng_state_(\d+)\.pth$", p.name))]
    if ranks:
        return max(ranks) + 1
    return 1 if (folder / "rng_state.pth").is_file() else None


def resume_target(run_dir: str | os.PathLike, resume) -> Path | None:
    """The checkpoint ``resume`` would start from, without any check (:func:`resume_checkpoint` does those): the
    newest complete one of ``run_dir`` for ``true``, the folder itself for a path; None for none."""
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("false", "")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        complete = complete_checkpoints(run_dir)
        return complete[-1] if complete else None
    path = Path(str(resume)).expanduser()
    return path if path.is_dir() else None


def check_resume_processes(folder: str | os.PathLike, processes: int) -> None:
    """A checkpoint resumes only under the number of processes that saved it; ConfigError (one line naming both
    counts) otherwise, before anything loads.

    Why not resume anyway: TRL's generation batch is per_device_train_batch_size x processes x steps per
    generation, so another count samples another number of prompts per step from another sampler order, and
    each process restores the random stream of its own rank (a rank without one starts a fresh stream): the
    continued run would be another run than the one in the folder, silently. A sharded checkpoint (FSDP2,
    DeepSpeed) also holds one shard of the weights and the optimizer per saving process."""
    saved = checkpoint_processes(folder)
    if saved is None or saved == processes:
        return

    def n(k):
        return f"{k} process" + ("es" if k != 1 else "")

    launch = ("without a launcher (python -m audiothink.train …)" if saved == 1
              else f"with accelerate launch --num_processes {saved} (or torchrun --nproc_per_node {saved})")
    raise ConfigError(
        f"resume={folder}: saved by {n(saved)}, and this launch has {n(processes)}: another process count trains "
        f"another run (the generation batch is per_device_train_batch_size x processes x steps per generation, "
        f"and each process restores its own rank's random state); resume {launch}, or start a new run from its "
        f"weights (model.path=<its weights>, another hydra.run.dir=…)")


# -- saving: a checkpoint is complete only once all of it is on disk ---------------------------------------


def begin_save(folder: str | os.PathLike) -> None:
    """Mark ``folder`` as being written (before any of the checkpoint's files): until :func:`end_save`, it is
    incomplete for a resume, whatever else it holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / SAVING, "wb") as f:
        os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def end_save(folder: str | os.PathLike) -> None:
    """Flush every file of ``folder`` to disk (a full disk can show only here), then remove the marker."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != SAVING:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)
    (folder / SAVING).unlink(missing_ok=True)
    _fsync_dir(folder)


def _disk_full(e: BaseException, folder: Path) -> str | None:
    """The reason when ``e`` (or what caused it) is a full disk or quota, else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(e.errno)
        text = str(e)
        if "No space left on device" in text or "os error 28" in text:
            return os.strerror(errno.ENOSPC)
        if "Disk quota exceeded" in text or "os error 122" in text:
            return os.strerror(errno.EDQUOT)
        if "iostream error" in text or "file write failed" in text:
            # torch's C++ writer does not say why: a nearly full file system says it for it
            probe = folder if folder.exists() else folder.parent
            try:
                usage = shutil.disk_usage(probe)
            except OSError:
                usage = None
            if usage is not None and usage.free < max(64 << 20, usage.total // 1000):
                return os.strerror(errno.ENOSPC)
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def disk_full_as_error(folder):
    """Inside: a full disk (ENOSPC / EDQUOT, however the writer words it) becomes one CheckpointFileError naming
    the checkpoint. ``folder``: the checkpoint's path, or a callable giving it (None: not saving, nothing to do)."""
    try:
        yield
    except CheckpointFileError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
        where = folder() if callable(folder) else folder
        reason = _disk_full(e, Path(where)) if where is not None else None
        if reason is None:
            raise
        try:
            free = f"{shutil.disk_usage(Path(where).parent).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise CheckpointFileError(
            f"{where}: {reason} while saving the checkpoint ({free}); it is left incomplete and a resume skips it: "
            "free space (or set trainer.save_total_limit lower), then continue with resume=true"
        ) from e


@contextmanager
def marked_save(trainer, trial):
    """Around a Trainer's ``_save_checkpoint``: the checkpoint's folder is marked "being written" (:func:`begin_save`)
    until :func:`completing_saves` has flushed it; a full disk is one line naming it (:func:`disk_full_as_error`)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    trainer._saving_checkpoint = folder
    with disk_full_as_error(folder):
        if trainer.args.should_save:
            begin_save(folder)
        yield


@contextmanager
def completing_saves(trainer):
    """Around a Trainer's ``_maybe_log_save_evaluate`` (the save and its ``on_save`` callbacks, e.g. the processor):
    once it returns, every rank's files are flushed and the marker removed (:func:`end_save`)."""
    with disk_full_as_error(lambda: trainer._saving_checkpoint):
        yield
        if trainer._saving_checkpoint is not None:
            if trainer.accelerator.num_processes > 1:
                trainer.accelerator.wait_for_everyone()  # every rank's files (RNG states, optimizer shards)
            if trainer.args.should_save:
                end_save(trainer._saving_checkpoint)
            trainer._saving_checkpoint = None


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The optimizer step a complete checkpoint was saved at (its trainer_state.json's global_step)."""
    return int(json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


# -- full-model weights ----------------------------------------------------------------------------------


def checkpoint_key_map(model: torch.nn.Module) -> dict[str, str]:
    """``{name in the checkpoint files: name in model.state_dict()}``, as ``save_pretrained`` renames them.

    Computed by running transformers' own save-time conversion (``revert_weight_conversion``) over the
    model's state dict and following each tensor object to its new name. Only renamings are supported (all
    that Qwen2-Audio and the Qwen2.5-Omni thinker use); a conversion that builds new tensors (e.g. a mixture of
    experts' per-expert weights) raises NotImplementedError (:func:`load_full_checkpoint` then moves elements).
    """
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    name_of = {id(t): k for k, t in state.items()}
    saved = revert_weight_conversion(model, dict(state)) if hasattr(model, "config") else state
    mapping = {}
    for ckpt_name, tensor in saved.items():
        if id(tensor) not in name_of:
            raise NotImplementedError(f"checkpoint tensor {ckpt_name!r} is converted, not renamed: cannot map it")
        mapping[ckpt_name] = name_of[id(tensor)]
    return mapping


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return load_file(str(folder / SAFE_WEIGHTS_NAME), device="cpu")
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        if (folder / index_name).is_file():
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                if shard.endswith(".safetensors"):
                    tensors.update(load_file(str(folder / shard), device="cpu"))
                else:
                    tensors.update(torch.load(folder / shard, map_location="cpu", weights_only=True))
            return tensors
    if (folder / WEIGHTS_NAME).is_file():
        return torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no model weights ({SAFE_WEIGHTS_NAME}, an index, or {WEIGHTS_NAME})")


def load_full_checkpoint(model: torch.nn.Module, folder: str | os.PathLike) -> int:
    """Load the full-model weights of a checkpoint folder into ``model``, in place; return the tensor count.

    Names are mapped with :func:`checkpoint_key_map`. Raises :class:`CheckpointError` on any missing,
    unexpected or misshapen key. A parameter absent from the files is accepted only when it is tied to one
    that is there (``save_pretrained`` may drop the tied copy, e.g. the LM head of a tied-embedding model).
    """
    folder = Path(folder)
    tensors = _read_tensors(folder)
    try:
        mapping = checkpoint_key_map(model)
    except NotImplementedError:  # save_pretrained builds new tensors (a mixture of experts' per-expert weights)
        return _load_converted_checkpoint(model, folder, tensors)
    state = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in mapping)
    renamed = {mapping[k]: v for k, v in tensors.items() if k in mapping}
    # tied parameters share storage: loading one loads the other
    storage = {k: t.untyped_storage().data_ptr() for k, t in state.items()}
    present = {storage[k] for k in renamed}
    missing = sorted(k for k in state if k not in renamed and storage[k] not in present)
    shapes = sorted(k for k, v in renamed.items() if tuple(v.shape) != tuple(state[k].shape))
    _load_matched(model, folder, renamed, storage, present, missing=missing, unexpected=unexpected, shapes=shapes)
    return len(renamed)


def _load_matched(model: torch.nn.Module, folder, tensors: dict, storage: dict, present: set, *,
                  missing: list, unexpected: list, shapes: list) -> None:
    """Load ``tensors`` (in-memory names) into ``model`` once they are known to match it: a CheckpointError naming
    the first missing / unexpected / reshaped keys otherwise, and one if load_state_dict leaves any key out that
    is not a tied copy (``storage``: name -> data pointer; ``present``: the pointers loaded)."""
    if unexpected or missing or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what} (first: {sorted(keys)[:3]})")
        raise CheckpointError(f"{folder}: the checkpoint does not match the model: " + "; ".join(parts))
    result = model.load_state_dict(tensors, strict=False)
    left = [k for k in result.missing_keys if storage.get(k) not in present]
    if left or result.unexpected_keys:
        raise CheckpointError(f"{folder}: loading left {left[:3]} missing, {result.unexpected_keys[:3]} unexpected")


def check_adapter_checkpoint(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """A LoRA checkpoint must hold exactly the adapter tensors of ``model`` (a PEFT model), same shapes."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no adapter_model.safetensors (is this a LoRA run's checkpoint?)")
    saved = load_file(str(path), device="cpu")
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{folder}: the adapter does not match the model: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]}), {len(shapes)} with another shape"
        )


def _load_converted_checkpoint(model: torch.nn.Module, folder: Path, tensors: dict[str, torch.Tensor]) -> int:
    """:func:`load_full_checkpoint` for a model whose ``save_pretrained`` converts tensors rather than renaming
    them: transformers 5 keeps a mixture of experts' weights fused in memory (Qwen3-Omni:
    ``mlp.experts.gate_up_proj`` of shape (experts, 2 x inner, hidden)) and writes them per expert
    (``mlp.experts.<e>.gate_proj.weight``, ...), as the hub checkpoints are.

    Where each element went is found by running transformers' own save-time conversion
    (``revert_weight_conversion``) over each tensor's element *indices* (one tensor at a time, so the index
    tensors never exceed the largest weight); every checkpoint element is then put back at its index. A
    conversion that computes values (not a pure move) would give non-index values and is refused; so is any
    missing, unexpected or misshapen tensor, and any element left unfilled or filled twice."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    storage = {k: t.untyped_storage().data_ptr() for k, t in state.items()}
    loaded: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    shapes, missing = [], []
    for key, tensor in state.items():
        index = torch.arange(tensor.numel(), dtype=torch.int64).view(tensor.shape)
        saved = revert_weight_conversion(model, {key: index})
        if not all(n in tensors for n in saved):
            missing.append(key)
            continue
        flat = torch.empty(tensor.numel(), dtype=tensor.dtype)
        filled = torch.zeros(tensor.numel(), dtype=torch.int32)
        for name, where in saved.items():
            if where.dtype != torch.int64:
                raise NotImplementedError(f"checkpoint tensor {name!r} is computed from {key!r}, not moved: "
                                          "cannot load it")
            if tuple(tensors[name].shape) != tuple(where.shape):
                shapes.append(name)
                continue
            flat[where.reshape(-1)] = tensors[name].reshape(-1).to(tensor.dtype)
            filled.index_add_(0, where.reshape(-1), torch.ones(where.numel(), dtype=torch.int32))
            used.add(name)
        if not shapes and not bool((filled == 1).all()):
            raise CheckpointError(f"{folder}: the checkpoint's tensors do not fill {key} exactly once")
        loaded[key] = flat.view(tensor.shape)
    present = {storage[k] for k in loaded}
    missing = [k for k in missing if storage[k] not in present]  # a tied copy loads with the tensor it shares
    unexpected = sorted(set(tensors) - used)
    _load_matched(model, folder, loaded, storage, present, missing=missing, unexpected=unexpected, shapes=shapes)
    return len(used)
