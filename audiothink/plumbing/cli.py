"""Command-line overrides checked: unknown keys and options are errors, with a suggestion.

Hydra accepts ``+eval.num_sample=8`` (a new key, added silently: the run then uses the default
``eval.num_samples``) and reports a misspelt ``eval.num_sample=8`` with a traceback-style message and exit 1.
Here a wrong override of ``python -m audiothink.train`` / ``.evaluate`` / ``.sft`` stops with one line, a
did-you-mean and exit 2, the exit code of every user error:

    error: unknown key eval.num_sample (did you mean eval.num_samples?)

A launch composes its config once, hydra's own composition. Hydra fails it for a misspelt key set without
``+`` and for a bad group option; only then are the overrides composed again (:func:`check_overrides`), to say
which one and suggest the fix. A ``+key`` that hydra adds silently is checked after the composition against the
overrides hydra records (:class:`CheckKeysCallback`, ``hydra.callbacks.keys``), before the run folder exists.

Adding keys with ``+`` is for what is open by design: a new reward (``+reward.<name>.…``), a TRL GRPOConfig
field the trainer config does not list (``+trainer.<field>``, checked against GRPOConfig), and hydra's own
settings (``hydra.…``).
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

from audiothink import CONFIG_DIR as CONFIGS  # the package's configs, wherever it is installed
from audiothink.plumbing.errors import ConfigError

__all__ = ["check_overrides", "run_checked", "CheckKeysCallback"]

# Config groups each entry point composes (the folders under configs/ that are hydra groups).
GROUPS = {"train": ("model", "data", "reward", "trainer", "judge"), "evaluate": ("benchmark", "model", "trainer"),
          "sft": ("model", "data", "trainer"), "curate": ("model", "data", "trainer")}
# Keys of earlier versions -> their names now (the rollout: block's vLLM settings became TRL's own fields).
RENAMED = {"rollout.vllm_mode": "trainer.vllm_mode",
           "rollout.gpu_memory_utilization": "trainer.vllm_gpu_memory_utilization",
           "rollout.server_host": "trainer.vllm_server_host", "rollout.server_port": "trainer.vllm_server_port"}
# Under these, `+` may add new keys.
OPEN = ("reward.", "hydra.")


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def _grpo_fields() -> list[str]:
    from audiothink.plumbing.grpo_fields import field_names  # the pinned TRL's from its snapshot: no TRL import

    return field_names()


def _check_key(cfg, key: str, adding: bool) -> None:
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if node is None:
            parent = ".".join(parts[:depth])
            raise ConfigError(f"{key}: {parent} is null; set it as a whole ({parent}={{...}}) or pick a config that "
                              "defines it")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{key}: {'.'.join(parts[:depth])} is a value, not a mapping")
        if part not in node.keys():  # `in` says False for a key whose value is missing (???)
            if path in RENAMED:
                raise ConfigError(f"unknown key {key}: it is {RENAMED[path]} now (vLLM's settings are TRL's own "
                                  "GRPOConfig fields; rollout.engine=vllm switches vLLM on)")
            if path.startswith("trainer.") and depth == 1:
                from audiothink.prompts import BYPASSES_AUDIO_PATH  # TRL arguments off the audio path: why not

                if part in BYPASSES_AUDIO_PATH:
                    raise ConfigError(f"{key}: {BYPASSES_AUDIO_PATH[part]}")
            if adding and path.startswith("trainer.") and depth == 1:
                fields = _grpo_fields()
                if part not in fields:
                    raise ConfigError(f"unknown key {key}: not a field of TRL's GRPOConfig"
                                      f"{_suggest(part, fields, 'trainer.')}")
                return
            if adding and any(key.startswith(p) for p in OPEN):
                return
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            hint = _suggest(part, [str(k) for k in node.keys()], prefix)
            if adding:
                raise ConfigError(f"unknown key {key}{hint}; '+' adds keys only under reward.* (a new reward), "
                                  "trainer.* (a GRPOConfig field) and hydra.*")
            raise ConfigError(f"unknown key {key}{hint}{_adding_hint(parts, depth)}")
        if depth == len(parts) - 1:
            return
        node = node[part] if not OmegaConf.is_missing(node, part) else None


def _adding_hint(parts: list[str], depth: int) -> str:
    """How to add the key instead, where '+' may add it: a new reward, a GRPOConfig field."""
    if parts[0] == "reward" and depth == 1:
        name = parts[1]
        return f"; a new reward is added with '+': +reward.{name}.weight=... +reward.{name}.fn._target_=..."
    if parts[0] == "trainer" and depth == 1 and len(parts) == 2 and parts[1] in _grpo_fields():
        return f"; a GRPOConfig field the trainer config does not list is added with '+': +{'.'.join(parts)}=..."
    return ""


def check_overrides(entry: str, overrides: list[str]) -> None:
    """Raise ConfigError for an unknown config group option or key among ``overrides`` (hydra's syntax)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the overrides: {str(e).splitlines()[0]}") from None
    groups = GROUPS[entry]
    selections, keys = [], []
    for text, o in zip(overrides, parsed):
        name = o.key_or_group
        if name.startswith("hydra.") or name.startswith("hydra/"):
            continue
        if name in groups or "/" in name:
            selections.append(text)
            if not o.is_delete():
                options = sorted(p.stem for p in (CONFIGS / name).glob("*.yaml"))
                value = str(o.value())
                if value not in options:
                    raise ConfigError(f"{name}={value}: no such option; {name} is one of {', '.join(options)}"
                                      f"{_suggest(value, options, name + '=')}")
        else:
            keys.append(o)
    register_resolvers()  # the entry point registered its own resolvers when it was imported
    try:
        if GlobalHydra.instance().is_initialized():  # called inside the launch (CheckKeysCallback): its configs
            cfg = compose(entry, overrides=selections)
        else:
            with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
                cfg = compose(entry, overrides=selections)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    for o in keys:
        if o.is_delete():
            continue
        _check_key(cfg, o.key_or_group, adding=o.is_add() or o.is_force_add())


# Whether this process's launch got past hydra's composition (CheckKeysCallback ran), and whether run_checked set
# HYDRA_FULL_ERROR (so that the callback hands hydra's own error reporting back to the run).
_launch = {"composed": False, "full_error_set": False}


def run_checked(entry: str, main) -> None:
    """``main()`` (a @hydra.main function); a wrong override stops with one line and exit 2 (module docstring).

    The config is composed once, by hydra. While it composes, HYDRA_FULL_ERROR makes hydra raise its
    composition error instead of printing it; the error is then explained by :func:`check_overrides`, the only
    second composition, and only for a launch that fails. Once composed (:class:`CheckKeysCallback`), hydra's own
    reporting is back for the run itself.
    """
    argv = sys.argv[1:]
    # with hydra's own flags (--help, --cfg job, --multirun, ...) the command line is hydra's business
    if not argv or any(a.startswith("-") for a in argv):
        main()
        return
    _launch["composed"] = False
    _launch["full_error_set"] = "HYDRA_FULL_ERROR" not in os.environ
    if _launch["full_error_set"]:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as e:  # noqa: BLE001 - only a failed composition is explained; the rest is raised again
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if _launch["composed"] or not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        GlobalHydra.instance().clear()  # the failed launch's; check_overrides composes from CONFIGS
        try:
            check_overrides(entry, argv)
            # not one check_overrides explains (e.g. `~reward.nothere`, `+eval.num_samples=8`): hydra's words
            message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        except ConfigError as explained:
            message = str(explained)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if _launch["full_error_set"]:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            _launch["full_error_set"] = False


def check_added_keys(entry: str, overrides: list[str]) -> None:
    """After a successful composition of ``overrides``: raise ConfigError for a ``+key`` that adds what may not be
    added (a misspelt key, silently added by hydra), with the message of :func:`check_overrides`.

    A ``+`` under reward.* or hydra.*, a ``+trainer.<GRPOConfig field>``, a group and a plain ``key=value`` (hydra
    would have refused an unknown one) need no look at the config as it was before the override added its key;
    any other ``+`` or ``++`` is judged by :func:`check_overrides`, which composes without the keys (a second
    composition for such a launch only: ``+eval.num_sample=8``, ``++eval.num_samples=8``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = GROUPS[entry]
    for o in OverridesParser.create().parse_overrides(overrides):
        name = o.key_or_group
        if not (o.is_add() or o.is_force_add()) or name in groups or "/" in name or name.startswith(OPEN):
            continue
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "trainer" and parts[1] in _grpo_fields():
            continue
        check_overrides(entry, overrides)
        return


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class CheckKeysCallback(_HydraCallback):
    """Hydra callback (``hydra.callbacks.keys``, before ``run_dir``): the launch's config is composed; a ``+key``
    hydra added silently is checked (:func:`check_added_keys`), before the run folder is claimed. A wrong one
    prints one line and exits 2."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        _launch["composed"] = True
        if _launch["full_error_set"]:  # the run's own errors: hydra's reporting (run_checked)
            os.environ.pop("HYDRA_FULL_ERROR", None)
            _launch["full_error_set"] = False
        entry = OmegaConf.select(config, "hydra.job.config_name")
        if entry not in GROUPS:  # --config-name=<a user's config>: its keys are its own
            return
        # as typed: read through the config, `+reward.x.fn.judge=${judge}` would come back with ${judge} resolved
        task = OmegaConf.select(config, "hydra.overrides.task")
        overrides = OmegaConf.to_container(task, resolve=False) if task is not None else []
        try:
            check_added_keys(entry, [str(o) for o in overrides])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


def register_resolvers() -> None:
    """``${toy_model_dir:}`` in the configs: the shipped toy checkpoint; ``${tiny_qwen3_omni_dir:}``: the tiny
    Qwen3-Omni thinker, built into the cache on first use (audiothink/toy/qwen3_omni.py)."""
    from omegaconf import OmegaConf

    from audiothink.toy import TOY_MODEL_DIR

    if not OmegaConf.has_resolver("toy_model_dir"):
        OmegaConf.register_new_resolver("toy_model_dir", lambda: str(TOY_MODEL_DIR))
    if not OmegaConf.has_resolver("tiny_qwen3_omni_dir"):
        def tiny_qwen3_omni_dir() -> str:
            from audiothink.toy.qwen3_omni import tiny_qwen3_omni_dir as build

            return str(build())

        OmegaConf.register_new_resolver("tiny_qwen3_omni_dir", tiny_qwen3_omni_dir)
