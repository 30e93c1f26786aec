"""Run folders that are never shared by accident.

Rules (for ``python -m audiothink.train``; evaluation uses the naming rule, and holds a named folder it reuses):

* The default folder, ``runs/<launch time>``, is claimed atomically (``mkdir``); when it exists, for example
  because another run started in the same second, the next free name is taken: ``<name>_2``, ``<name>_3``…
* A folder given on the command line (``hydra.run.dir=…``) that already holds a run is refused unless
  ``resume=true`` (or ``resume=<checkpoint>``): the message names both ways out.
* The process that claims a folder holds it while it lives: an OS lock (``flock``) on the marker,
  ``.audiothink-run``, which also names the launch and the holder (pid, host). A second process on a live
  run's folder (a new run or ``resume=true``) is refused, naming the holder, and touches nothing there. The
  kernel drops the lock when the holder ends, however it ends (``kill -9`` too): a stale marker never blocks
  a later resume.
* The processes of one launch (torchrun, accelerate launch) share one folder: the main process (global rank
  0) claims it, holds it and writes the marker naming the launch; the others wait for a marker of their
  launch, written after they started, and take that folder.
* A run removes a folder only if it made the folder itself (its own ``mkdir``) and holds it: never a
  folder another run made or claimed first, nor one the user made (a folder holding only ``notes.txt``).
* A folder that cannot be made or written (read-only file system, no permission, a file in its place, a
  name over the file system's limit, a full disk) is a ConfigError naming the path, before any work.

The check runs twice: as a hydra callback before hydra writes anything into the folder (its ``.hydra/``
record and the log file), and in ``train()`` for callers of the Python API.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from audiothink.plumbing.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the holder's pid and start time are checked instead
    fcntl = None

__all__ = ["MARKER", "launch_key", "previous_run", "claim", "claim_unique", "remove_if_unused", "disk_fault",
           "guard_log_files", "RunDirCallback"]

MARKER = ".audiothink-run"
# Run folders this process made itself (its own mkdir): the only ones it may remove again (remove_if_unused).
CREATED: set[str] = set()
# The parent folders each of those mkdirs made too (deepest first, e.g. runs/eval/toy for runs/eval/toy/<time>): a
# removed run folder takes them along where they are still empty, so a stopped run leaves no empty tree behind.
PARENTS_MADE: dict[str, list[Path]] = {}
# Run folders this process holds: resolved path -> the open file descriptor of the locked marker, kept open (and
# so locked) until the process ends.
HELD: dict[str, int] = {}
# What hydra itself writes into a run folder before the job starts: not a sign of an earlier run.
_HYDRA_OWN = (".hydra", MARKER)
# How long a non-main process waits for the main process to claim the launch's folder.
_WAIT_S = 120.0
# A disk that cannot take the run's files any more (full, over quota, remounted read-only): not a bug of the run.
_DISK_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# flock errors that mean "this file system has no locks" (NFS without lockd, Lustre mounted without flock)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def remove_if_unused(folder: str | os.PathLike, results: tuple[str, ...]) -> bool:
    """Remove ``folder`` if this process made it, still holds it, and it holds nothing matching the ``results``
    glob patterns (a failed run's stub: hydra's record, the marker, a log); returns whether it did. A folder
    another process made, or claimed first, is never removed. Closes the logging handlers first, since the
    run's log file is in the folder."""
    import logging
    import shutil

    folder = Path(folder)
    key = _key(folder)
    if key not in CREATED or key not in HELD or any(any(folder.glob(p)) for p in results):
        return False
    logging.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    os.close(HELD.pop(key))
    for parent in PARENTS_MADE.pop(key, []):
        try:
            parent.rmdir()  # only while empty: another run may have put its folder there meanwhile
        except OSError:
            break
    return True


def disk_fault(e: BaseException, folder: str | os.PathLike) -> str | None:
    """``<file>: [Errno 28] No space left on device`` for a full (or read-only) disk met while writing into the
    run folder ``folder`` (also as the cause of another error), else None: any other error is a bug."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FAULTS:
            where = e.filename or f"writing into {folder}"
            return f"{where}: [Errno {e.errno}] {e.strerror or os.strerror(e.errno)}"
        e = e.__cause__ or e.__context__
    return None


def guard_log_files() -> None:
    """The run's log files (hydra's ``<run>/train.log``) on a full disk: one line on stderr, and the file gets no
    more lines, instead of logging's traceback for every record (the console keeps them all)."""
    import logging

    def handle_error(handler: logging.FileHandler, record: logging.LogRecord) -> None:
        fault = disk_fault(sys.exc_info()[1], Path(handler.baseFilename).parent)
        if fault is None:
            return logging.Handler.handleError(handler, record)
        print(f"warning: {handler.baseFilename}: {fault.split(': ', 1)[-1]}; the log file stops here",
              file=sys.stderr)
        handler.setLevel(logging.CRITICAL + 1)
        return None

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = handle_error.__get__(handler)


def _launch() -> dict[str, Any]:
    """Who is launching: the same for every process of one torchrun/accelerate launch, else this process."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        key = ":".join(env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
        return {"key": f"launch:{key}", "rank": int(env.get("RANK", "0"))}
    return {"key": f"process:{socket.gethostname()}:{os.getpid()}:{_process_start()}", "rank": 0}


def _process_start(pid: int | None = None) -> float:
    try:
        import psutil  # an accelerate dependency

        return psutil.Process(pid or os.getpid()).create_time()
    except Exception:  # noqa: BLE001 - only part of a key
        return 0.0


def launch_key() -> str:
    return _launch()["key"]


def previous_run(folder: Path) -> list[str]:
    """Entries of ``folder`` that belong to an earlier run (anything but hydra's own record and logs)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in _HYDRA_OWN and p.suffix != ".log")


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ours(folder: Path, key: str, since: float) -> bool:
    marker = _read_marker(folder)
    # a launch key can repeat (same address, port and rendezvous id another day): only a marker written
    # after this process started counts for a multi-process launch
    return bool(marker) and marker.get("launch") == key and (
        key.startswith("process:") or marker.get("written", 0) >= since - 5.0
    )


def _fs_error(folder: Path, e: OSError) -> ConfigError:
    """A run folder that cannot be made or written, as one line naming the path."""
    blocking = None
    for p in (folder, *folder.parents):
        try:
            if p.exists() and not p.is_dir():
                blocking = p
                break
        except OSError:  # a name over the limit cannot even be looked at
            continue
    if blocking is not None:
        what = f"{blocking} is a file, not a folder"
    else:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(folder) else ""
        what = f"cannot be created or written: [Errno {e.errno}] {e.strerror or e}{where}"
        if e.errno == errno.ENAMETOOLONG:
            what += " (a name in the path is longer than the file system allows)"
    return ConfigError(f"run folder {folder}: {what}; choose another place with hydra.run.dir=…")


def _missing_parents(folder: Path) -> list[Path]:
    """The parents of ``folder`` that do not exist yet, deepest first (what ``mkdir(parents=True)`` will make)."""
    missing, parent = [], Path(folder).absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def _make(folder: Path) -> bool:
    """Make ``folder`` (and its parents); whether this call made it. ConfigError if it cannot be a folder."""
    missing = _missing_parents(folder)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if folder.is_dir():
            return False
        raise _fs_error(folder, FileExistsError(errno.EEXIST, "File exists", str(folder))) from None
    except OSError as e:
        raise _fs_error(folder, e) from None
    CREATED.add(_key(folder))
    PARENTS_MADE[_key(folder)] = missing
    return True


def _holder_alive(record: dict | None) -> bool:
    """Without OS locks: whether the process a marker names is still running (same host, pid and start time)."""
    if not record or record.get("host") != socket.gethostname() or record.get("pid") in (None, os.getpid()):
        return False
    start = float(record.get("start") or 0.0)  # 0: unknown (no psutil), a pid alone may have been reused
    return bool(start) and abs(_process_start(int(record["pid"])) - start) < 1.0


def _in_use(folder: Path) -> ConfigError:
    record = None
    for _ in range(20):  # the holder writes its record right after it took the lock
        record = _read_marker(folder)
        if record and "pid" in record:
            break
        time.sleep(0.05)
    who = f"pid {record['pid']} on {record.get('host', '?')}" if record and "pid" in record else "another process"
    return ConfigError(
        f"run folder {folder} is in use by a running process ({who}): one folder takes one run at a time; "
        "wait for it to end (or stop it), or start a new run elsewhere (another hydra.run.dir=…)"
    )


def _locked_by_other(folder: Path) -> bool:
    """Whether a live process holds ``folder`` (touches nothing: the marker is only opened to read)."""
    if _key(folder) in HELD:
        return False
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY)
    except OSError:
        return False  # no marker: nobody holds it
    try:
        if fcntl is None:
            return _holder_alive(_read_marker(folder))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno in _NO_LOCKS:
                return _holder_alive(_read_marker(folder))
            raise
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here


def _lock(folder: Path) -> int:
    """Open and lock ``folder``'s marker (made if absent) for this process; ConfigError if a live process holds it."""
    path = folder / MARKER
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _fs_error(folder, e) from None
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(folder) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                os.close(fd)
                raise _fs_error(folder, e) from None
            if _holder_alive(_read_marker(folder)):
                os.close(fd)
                raise _in_use(folder) from None
        try:
            # the marker may have been replaced or removed between open and lock: hold the file the path names now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _hold(folder: Path, fd: int, key: str) -> None:
    """Write this launch and its holder into the locked marker, and keep it locked for the process's life."""
    record = {"launch": key, "written": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
              "start": _process_start()}
    data = json.dumps(record).encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / MARKER))
    except OSError as e:
        os.close(fd)
        raise _fs_error(folder, e) from None
    HELD[_key(folder)] = fd


def _refusal(folder: Path, found: list[str]) -> ConfigError:
    shown = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
    return ConfigError(
        f"run folder {folder} already holds a run ({shown}): continue it with resume=true, "
        "or start a new one elsewhere (another hydra.run.dir=…, or none for a fresh runs/<time>)"
    )


def claim(folder: str | os.PathLike, *, resume: bool) -> Path:
    """Make ``folder`` this launch's run folder and hold it, or raise ConfigError: a live process holds it, it
    holds another run (and no resume), or it cannot be made or written.

    Idempotent within the process that holds it. Non-main processes of a multi-process launch wait for the
    main process's marker instead of judging the folder themselves (it may already hold the main process's
    first files).
    """
    folder = Path(folder)
    launch = _launch()
    since = _process_start()
    if launch["rank"] != 0:
        deadline = time.time() + _WAIT_S
        while not _ours(folder, launch["key"], since):
            if time.time() > deadline:
                raise ConfigError(f"run folder {folder}: the main process of this launch did not claim it "
                                  f"within {_WAIT_S:.0f} s (did it stop with an error?)")
            time.sleep(0.2)
        return folder
    if _key(folder) in HELD:
        return folder
    _make(folder)
    # judged before anything is written: a refused run leaves the folder as it was
    if _locked_by_other(folder):
        raise _in_use(folder)
    found = previous_run(folder)
    if found and not resume:
        raise _refusal(folder, found)
    fd = _lock(folder)
    found = previous_run(folder)  # again, under the lock: a run may have come and gone meanwhile
    if found and not resume:
        os.close(fd)
        raise _refusal(folder, found)
    _hold(folder, fd, launch["key"])
    return folder


def claim_unique(base: str | os.PathLike) -> Path:
    """Claim ``base``, or ``base_2``, ``base_3``… whichever is free first (``mkdir`` is atomic)."""
    base = Path(base)
    launch = _launch()
    since = _process_start()
    names = [base] + [base.with_name(f"{base.name}_{k}") for k in range(2, 1000)]
    if launch["rank"] != 0:
        deadline = time.time() + _WAIT_S
        while True:
            for folder in names:
                if not folder.exists():
                    break
                if _ours(folder, launch["key"], since):
                    return folder
            if time.time() > deadline:
                raise ConfigError(f"run folder {base}: the main process of this launch claimed none within "
                                  f"{_WAIT_S:.0f} s")
            time.sleep(0.2)
    missing = _missing_parents(base)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fs_error(base, e) from None
    for folder in names:
        try:
            folder.mkdir()
        except FileExistsError:
            if _key(folder) in HELD:
                return folder
            continue
        except OSError as e:
            raise _fs_error(folder, e) from None
        CREATED.add(_key(folder))
        PARENTS_MADE[_key(folder)] = missing
        try:
            fd = _lock(folder)
        except ConfigError:
            if _locked_by_other(folder):  # named by another run (hydra.run.dir=…) the moment it was made
                continue
            raise
        _hold(folder, fd, launch["key"])
        return folder
    raise ConfigError(f"run folder {base}: no free name among {base.name}, {base.name}_2 … _999")


def _explicit(config) -> bool:
    """Whether the user named the folder (hydra.run.dir=… or output_dir=…) rather than taking the default."""
    from omegaconf import OmegaConf

    overrides = [*(OmegaConf.select(config, "hydra.overrides.hydra") or []),
                 *(OmegaConf.select(config, "hydra.overrides.task") or [])]
    return any(str(o).lstrip("+~").split("=", 1)[0] in ("hydra.run.dir", "output_dir") for o in overrides)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name over the file system's limit: claim() says so
        return False


def _in_the_way(folder: Path, path: Path, what: str) -> ConfigError:
    return ConfigError(f"run folder {folder}: {path} is {what}, where hydra writes its own; remove it, or choose "
                       "another place with hydra.run.dir=…")


def _check_hydra_files(folder: Path, config, *, write: bool) -> None:
    """What hydra writes into the folder next (its record, the job's log) can be written: else hydra stops with
    a traceback ("Unable to configure handler 'file'", NotADirectoryError). ``write``: also open the log (once the
    folder is claimed; hydra opens it next anyway)."""
    from omegaconf import OmegaConf

    sub = OmegaConf.select(config, "hydra.output_subdir")
    if sub is not None:
        record = folder / Path(str(sub)).parts[0]
        if record.exists() and not record.is_dir():
            raise _in_the_way(folder, record, "a file, not a folder")
    if OmegaConf.select(config, "hydra.job_logging.handlers.file") is None:
        return
    log_file = folder / f"{OmegaConf.select(config, 'hydra.job.name') or 'train'}.log"
    if log_file.is_dir():
        raise _in_the_way(folder, log_file, "a folder, not a file")
    if write:
        try:
            with open(log_file, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise _fs_error(folder, e) from None


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class RunDirCallback(_HydraCallback):
    """Hydra callback (``hydra.callbacks.run_dir``): claims the run folder before hydra writes into it.

    ``refuse_existing``: refuse a named folder that holds another run unless the config's ``resume`` is set
    (training); false for evaluation, where rerunning into a folder resumes it by design (but never beside a
    live evaluation in that folder: it is held like a training run's).
    """

    def __init__(self, refuse_existing: bool = True):
        self.refuse_existing = refuse_existing

    def on_run_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf, open_dict, read_write

        target = None
        try:
            if _explicit(config):
                target = Path(str(OmegaConf.select(config, "output_dir") if any(
                    str(o).split("=", 1)[0].lstrip("+") == "output_dir"
                    for o in OmegaConf.select(config, "hydra.overrides.task") or []) else config.hydra.run.dir))
                resume = OmegaConf.select(config, "resume")
                resumed = resume not in (None, False, "false", "")
                if self.refuse_existing and resumed:
                    # resume=<another run's checkpoint> into this run: refused before anything is written
                    from audiothink.plumbing.checkpoints import check_resume_owner

                    check_resume_owner(str(target), resume)
                    # the run's own config.yaml: an override that would change the run is refused here
                    from audiothink.plumbing.resume_config import check_resume_config

                    check_resume_config(config, target, OmegaConf.select(config, "hydra.overrides.task") or [])
                    # saved by as many processes as this launch has (the launchers set WORLD_SIZE)
                    from audiothink.plumbing.checkpoints import check_resume_processes, resume_target

                    checkpoint = resume_target(target, resume)
                    if checkpoint is not None:
                        check_resume_processes(checkpoint, int(os.environ.get("WORLD_SIZE", "1")))
                hydra_dir = _key(Path(str(config.hydra.run.dir))) == _key(target)
                if hydra_dir and _is_dir(target):
                    _check_hydra_files(target, config, write=False)  # before the claim writes its marker
                claim(target, resume=resumed or not self.refuse_existing)
                if self.refuse_existing and resumed and (target / ".hydra").is_dir():
                    # hydra would overwrite the first start's record (.hydra/config.yaml, overrides.yaml)
                    with read_write(config.hydra), open_dict(config.hydra):
                        config.hydra.output_subdir = f".hydra/resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            else:
                target = claim_unique(str(config.hydra.run.dir))
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra.run.dir = str(target)
            if _launch()["rank"] == 0 and _key(Path(str(config.hydra.run.dir))) == _key(target):
                _check_hydra_files(target, config, write=True)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            if target is not None:
                remove_if_unused(target, ())  # only a folder this process made and holds
            sys.exit(2)
