"""A resume continues the run in its folder: the run's own ``config.yaml`` is the config, not the defaults.

``python -m audiothink.train hydra.run.dir=runs/exp1 resume=true`` takes ``runs/exp1/config.yaml`` (the resolved
config of the run's first start) as it is. An override given at resume is applied on top of it only where
changing it cannot make the continued run another run (:data:`SAFE`): the steps to train to (to extend a finished
run), checkpointing and reporting. Any other override that differs from the run's value (a learning rate, which
the restored optimizer and scheduler would ignore anyway; a ``force_mode``; a reward weight; a model or data
path) is refused with one line naming the keys, before anything loads and before anything is written into the
folder. An override equal to the run's value is accepted (repeating the first start's command line resumes too).

The keys a user overrode are hydra's task overrides (``hydra.overrides.task``); a group choice (``model=…``)
covers every key under it. Without hydra (the Python API), every key that differs from the run's is taken as
overridden. A run folder without ``config.yaml`` (a ``resume=<checkpoint>`` branching into a new folder) resumes
with the composed config, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audiothink.plumbing.errors import ConfigError

__all__ = ["SAFE", "IGNORED", "resume_differences", "check_resume_config", "resumed_config"]

# Overrides a resume applies on top of the run's config.yaml: none changes what the remaining steps compute.
# trainer.max_steps extends (or shortens) the run: the learning-rate schedule and an annealing reward follow
# the new total from the checkpoint on, as they would have for a run started with it.
SAFE = (
    "trainer.max_steps",
    "trainer.save_steps",
    "trainer.save_total_limit",
    "trainer.report_to",
    "log.plots",
    "log.completion_prompts",
)
# Not part of the comparison: where the run is and how it was started.
IGNORED = ("output_dir", "resume", "hydra")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"trainer.max_steps": 10, ...}: dicts are walked, lists and scalars are values."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _resolved(cfg: DictConfig) -> dict:
    """The config as plain values, without the keys that name the run folder (``${hydra:…}`` needs a live hydra)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for k in IGNORED:
        raw.pop(k, None)
    return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)


def _saved(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for k in IGNORED:
        saved.pop(k, None)
    return saved


def _overridden(overrides) -> list[str] | None:
    """The config keys hydra's task overrides name (``trainer.max_steps=4`` -> trainer.max_steps, ``model=omni``
    -> model, ``+trainer.x=1`` -> trainer.x); None when unknown (no hydra)."""
    if overrides is None:
        return None
    keys = []
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key and not _under(key, IGNORED):
            keys.append(key)
    return keys


def resume_differences(cfg: DictConfig, run_dir: Path, overrides=None) -> tuple[dict, list[str], list[str]] | None:
    """``(saved, safe, refused)``: the run's saved config (plain values), and the keys an override at resume
    changes from it, split into those applied and those refused. None without a ``config.yaml``."""
    saved = _saved(run_dir)
    if saved is None:
        return None
    now, before = _flat(_resolved(cfg)), _flat(saved)
    named = _overridden(overrides)
    changed = sorted(k for k in set(now) | set(before)
                     if now.get(k, "<absent>") != before.get(k, "<absent>") and (named is None or _under(k, named)))
    if named is None:
        # the API: a key the config gained since the run started (a new field) is its default, not a change
        changed = [k for k in changed if k in before]
    safe = [k for k in changed if _under(k, SAFE)]
    return saved, safe, [k for k in changed if k not in safe]


def _refusal(run_dir: Path, refused: list[str], cfg_now: dict, saved: dict) -> ConfigError:
    now, before = _flat(cfg_now), _flat(saved)
    shown = ", ".join(f"{k} ({before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r})" for k in refused[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    return ConfigError(
        f"resume: {run_dir} continues its own run ({run_dir / 'config.yaml'}), and these overrides change it: "
        f"{shown}{more}; only {', '.join(SAFE)} may change at resume: drop the others, or start a new run "
        "(another hydra.run.dir=…)")


def check_resume_config(cfg: DictConfig, run_dir: Path, overrides=None) -> None:
    """Refuse (ConfigError, one line) overrides at resume that would change the run; for the hydra callback, which
    runs before hydra writes anything into the folder."""
    found = resume_differences(cfg, run_dir, overrides)
    if found and found[2]:
        raise _refusal(Path(run_dir), found[2], _resolved(cfg), found[0])


def _task_overrides():
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no hydra: the API
        return None


def resumed_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The config a resume trains with: the run's ``config.yaml``, the safe overrides at resume on top, this
    launch's ``output_dir`` and ``resume``; keys added to the config since the run started keep their defaults.
    ConfigError for an override that changes anything else. ``cfg`` itself when there is no ``config.yaml``."""
    overrides = _task_overrides()
    found = resume_differences(cfg, run_dir, overrides)
    if found is None:
        return cfg
    saved, safe, refused = found
    now = _resolved(cfg)
    if refused:
        raise _refusal(Path(run_dir), refused, now, saved)
    merged = OmegaConf.create(saved)
    flat_now, flat_saved = _flat(now), _flat(saved)
    for key, value in flat_now.items():
        if key in safe or key not in flat_saved:
            OmegaConf.update(merged, key, value, force_add=True)
    merged.output_dir = str(cfg.output_dir)
    merged.resume = cfg.resume
    OmegaConf.set_struct(merged, True)
    return merged
