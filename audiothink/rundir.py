"""Run folders that are never shared by accident.

Rules (for ``python -m audiothink.train``; evaluation uses the naming rule only):

* The default folder, ``runs/<launch time>``, is claimed atomically (``mkdir``); when it exists, for example
  because another run started in the same second, the next free name is taken: ``<name>_2``, ``<name>_3``…
* A folder given on the command line (``hydra.run.dir=…``) that already holds a run is refused unless
  ``resume=true`` (or ``resume=<checkpoint>``): the message names both ways out.
* The processes of one launch (torchrun, accelerate launch) share one folder: the main process (global rank
  0) claims it and writes a marker, ``.audiothink-run``, naming the launch; the others wait for a marker of
  their launch and take that folder.

The check runs twice: as a hydra callback before hydra writes anything into the folder (its ``.hydra/``
record and the log file), and in ``train()`` for callers of the Python API.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from audiothink.errors import ConfigError

__all__ = ["MARKER", "launch_key", "previous_run", "claim", "claim_unique", "remove_if_unused", "RunDirCallback"]

MARKER = ".audiothink-run"
# Run folders this process created (a run that fails before writing results removes its own: remove_if_unused).
CREATED: set[str] = set()
# What hydra itself writes into a run folder before the job starts: not a sign of an earlier run.
_HYDRA_OWN = (".hydra", MARKER)
# How long a non-main process waits for the main process to claim the launch's folder.
_WAIT_S = 120.0


def remove_if_unused(folder: str | os.PathLike, results: tuple[str, ...]) -> bool:
    """Remove ``folder`` if this process created it and it holds nothing matching the ``results`` glob patterns
    (a failed run's stub: hydra's record, the marker, a log); returns whether it did. Closes the logging
    handlers first, since the run's log file is in the folder."""
    import logging
    import shutil

    folder = Path(folder)
    if str(folder.resolve()) not in CREATED or any(any(folder.glob(p)) for p in results):
        return False
    logging.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _launch() -> dict[str, Any]:
    """Who is launching: the same for every process of one torchrun/accelerate launch, else this process."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        key = ":".join(env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
        return {"key": f"launch:{key}", "rank": int(env.get("RANK", "0"))}
    return {"key": f"process:{socket.gethostname()}:{os.getpid()}:{_process_start()}", "rank": 0}


def _process_start() -> float:
    try:
        import psutil  # an accelerate dependency

        return psutil.Process(os.getpid()).create_time()
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


def _write_marker(folder: Path, key: str) -> None:
    tmp = folder / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"launch": key, "written": time.time()}), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def _ours(folder: Path, key: str, since: float) -> bool:
    marker = _read_marker(folder)
    # a launch key can repeat (same address, port and rendezvous id another day): only a marker written
    # after this process started counts for a multi-process launch
    return bool(marker) and marker.get("launch") == key and (
        key.startswith("process:") or marker.get("written", 0) >= since - 5.0
    )


def _refusal(folder: Path, found: list[str]) -> ConfigError:
    shown = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
    return ConfigError(
        f"run folder {folder} already holds a run ({shown}): continue it with resume=true, "
        "or start a new one elsewhere (another hydra.run.dir=…, or none for a fresh runs/<time>)"
    )


def claim(folder: str | os.PathLike, *, resume: bool) -> Path:
    """Make ``folder`` this launch's run folder, or raise ConfigError if it holds another run (and no resume).

    Idempotent for the processes of one launch. Non-main processes of a multi-process launch wait for the
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
    if _ours(folder, launch["key"], since):
        return folder
    found = previous_run(folder)
    if found and not resume:
        raise _refusal(folder, found)
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(folder, launch["key"])
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
    base.parent.mkdir(parents=True, exist_ok=True)
    for folder in names:
        try:
            folder.mkdir()
        except FileExistsError:
            if _ours(folder, launch["key"], since):
                return folder
            continue
        CREATED.add(str(folder.resolve()))
        _write_marker(folder, launch["key"])
        return folder
    raise ConfigError(f"run folder {base}: no free name among {base.name}, {base.name}_2 … _999")


def _explicit(config) -> bool:
    """Whether the user named the folder (hydra.run.dir=… or output_dir=…) rather than taking the default."""
    from omegaconf import OmegaConf

    overrides = [*(OmegaConf.select(config, "hydra.overrides.hydra") or []),
                 *(OmegaConf.select(config, "hydra.overrides.task") or [])]
    return any(str(o).lstrip("+~").split("=", 1)[0] in ("hydra.run.dir", "output_dir") for o in overrides)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class RunDirCallback(_HydraCallback):
    """Hydra callback (``hydra.callbacks.run_dir``): claims the run folder before hydra writes into it.

    ``refuse_existing``: refuse a named folder that holds another run unless the config's ``resume`` is set
    (training); false for evaluation, where rerunning into a folder resumes it by design.
    """

    def __init__(self, refuse_existing: bool = True):
        self.refuse_existing = refuse_existing

    def on_run_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf, open_dict, read_write

        try:
            if _explicit(config):
                target = OmegaConf.select(config, "output_dir") if any(
                    str(o).split("=", 1)[0].lstrip("+") == "output_dir"
                    for o in OmegaConf.select(config, "hydra.overrides.task") or []) else config.hydra.run.dir
                if not Path(str(target)).exists():
                    CREATED.add(str(Path(str(target)).resolve()))
                if self.refuse_existing:
                    resume = OmegaConf.select(config, "resume")
                    resumed = resume not in (None, False, "false", "")
                    if resumed:  # resume=<another run's checkpoint> into this run: refused before anything is written
                        from audiothink.checkpoints import check_resume_owner

                        check_resume_owner(str(target), resume)
                    claim(str(target), resume=resumed)
                    if resumed and (Path(str(target)) / ".hydra").is_dir():
                        # hydra would overwrite the first start's record (.hydra/config.yaml, overrides.yaml)
                        with read_write(config.hydra), open_dict(config.hydra):
                            config.hydra.output_subdir = f".hydra/resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
                return
            folder = claim_unique(str(config.hydra.run.dir))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(folder)
