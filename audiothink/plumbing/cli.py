"""Command-line overrides checked before hydra runs: unknown keys and options are errors, with a suggestion.

Hydra accepts ``+eval.num_sample=8`` (a new key, added silently: the run then uses the default
``eval.num_samples``) and reports a misspelt ``eval.num_sample=8`` with a traceback-style message and exit 1.
Here every override of ``python -m audiothink.train`` / ``.evaluate`` is checked against the composed config
first; a wrong one stops with one line, a did-you-mean and exit 2, the exit code of every user error:

    error: unknown key eval.num_sample (did you mean eval.num_samples?)

Adding keys with ``+`` is for what is open by design: a new reward (``+reward.<name>.…``), a TRL GRPOConfig
field the trainer config does not list (``+trainer.<field>``, checked against GRPOConfig), and hydra's own
settings (``hydra.…``).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any

from audiothink.plumbing.errors import ConfigError

__all__ = ["check_overrides", "run_checked"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Config groups each entry point composes (the folders under configs/ that are hydra groups).
GROUPS = {"train": ("model", "data", "reward", "trainer", "judge"), "evaluate": ("benchmark", "model", "trainer"),
          "sft": ("model", "data", "trainer")}
# Under these, `+` may add new keys.
OPEN = ("reward.", "hydra.")


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def _grpo_fields() -> list[str]:
    from trl import GRPOConfig

    return [f.name for f in dataclasses.fields(GRPOConfig)]


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
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(entry, overrides=selections)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    for o in keys:
        if o.is_delete():
            continue
        _check_key(cfg, o.key_or_group, adding=o.is_add() or o.is_force_add())


def run_checked(entry: str, main) -> None:
    """``main()`` (a @hydra.main function) after :func:`check_overrides` on the command line's overrides."""
    argv = sys.argv[1:]
    # with hydra's own flags (--help, --cfg job, --multirun, ...) the command line is hydra's business
    if argv and not any(a.startswith("-") for a in argv):
        try:
            check_overrides(entry, argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    main()


def register_resolvers() -> None:
    """``${toy_model_dir:}`` in the configs: the shipped toy checkpoint."""
    from omegaconf import OmegaConf

    from audiothink.toy import TOY_MODEL_DIR

    if not OmegaConf.has_resolver("toy_model_dir"):
        OmegaConf.register_new_resolver("toy_model_dir", lambda: str(TOY_MODEL_DIR))
