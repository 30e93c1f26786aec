"""What the config checks read from TRL's ``GRPOConfig``, without importing TRL when it can be helped.

The checks of ``trainer.*`` need three facts about the installed TRL's ``GRPOConfig``: its field names (a
``+trainer.<field>`` must be one), the fields typed int, float or bool (a value must have that type), and the
values its help text documents for ``loss_type`` and ``importance_sampling_level``. Importing ``trl`` for them
imports transformers' ``TrainingArguments`` and PEFT, about 6 s on a 2-core CPU: most of the time a bad config
value took to stop. So the facts of the pinned TRL are kept in ``grpo_fields.json`` beside this module, read
when the installed TRL is the version they were taken from, and computed from TRL otherwise (another TRL: the
same answers, only slower). ``tests/plumbing/test_grpo_fields.py`` checks that the file equals what the installed
TRL gives; after a TRL upgrade, rewrite it with

    python -m audiothink.plumbing.grpo_fields
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import re
import types
import typing
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("grpo_fields.json")
CHOICE_FIELDS = ("loss_type", "importance_sampling_level")
_KINDS = {"int": int, "float": float, "bool": bool}


def from_trl() -> dict:
    """The facts, computed from the installed TRL: ``{"trl": version, "fields": [name, ...], "kinds": {name:
    "int" | "float" | "bool"}, "choices": {field: [value, ...]}}`` (JSON types, as the snapshot stores them)."""
    from trl import GRPOConfig

    kinds = {}
    for name, hint in typing.get_type_hints(GRPOConfig).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        args = set(typing.get_args(hint)) if union else {hint}
        args.discard(type(None))
        if len(args) == 1 and (kind := args.pop()) in (int, float, bool):
            kinds[name] = kind.__name__
    fields = dataclasses.fields(GRPOConfig)
    choices = {}
    for field in CHOICE_FIELDS:
        help_text = next(f.metadata.get("help", "") for f in fields if f.name == field)
        if "Supported values are" in help_text:  # loss_type: "Supported values are 'grpo', ..., and 'vespo'. ..."
            help_text = help_text.split("Supported values are", 1)[1].split(".", 1)[0]
        choices[field] = list(dict.fromkeys(re.findall(r"'([a-z_]+)'", help_text)))
    return {"trl": importlib.metadata.version("trl"), "fields": [f.name for f in fields], "kinds": kinds,
            "choices": choices}


@functools.cache
def facts() -> dict:
    """The snapshot when the installed TRL is its version, else :func:`from_trl` (read once per process)."""
    try:
        installed = importlib.metadata.version("trl")
        snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return from_trl()
    return snapshot if snapshot.get("trl") == installed else from_trl()


def field_names() -> list[str]:
    """Every GRPOConfig field name."""
    return list(facts()["fields"])


def field_kinds() -> dict[str, type]:
    """GRPOConfig's fields typed int, float or bool (or one of them or None): the type a value must have."""
    return {name: _KINDS[kind] for name, kind in facts()["kinds"].items()}


def choices(field: str) -> tuple[str, ...]:
    """The values GRPOConfig's help text documents for ``field`` (one of :data:`CHOICE_FIELDS`)."""
    return tuple(facts()["choices"][field])


if __name__ == "__main__":
    computed = from_trl()
    SNAPSHOT.write_text(json.dumps(computed, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT} (trl {computed['trl']})")
