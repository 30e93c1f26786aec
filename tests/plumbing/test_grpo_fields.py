"""The GRPOConfig facts the config checks read (audiothink/plumbing/grpo_fields.py): the snapshot is the installed
TRL's, and another TRL is read live."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json

from audiothink.plumbing import grpo_fields


def test_the_snapshot_is_what_the_installed_trl_gives():
    """After a TRL upgrade this fails: rewrite the snapshot with `python -m audiothink.plumbing.grpo_fields`."""
    snapshot = json.loads(grpo_fields.SNAPSHOT.read_text(encoding="utf-8"))
    assert snapshot == grpo_fields.from_trl()


def test_the_facts_of_the_pinned_trl():
    from trl import GRPOConfig

    assert grpo_fields.facts()["trl"] == importlib.metadata.version("trl")
    names = grpo_fields.field_names()
    assert {"beta", "num_generations", "loss_type", "learning_rate", "max_steps"} <= set(names)
    kinds = grpo_fields.field_kinds()
    assert (kinds["max_steps"], kinds["learning_rate"], kinds["bf16"]) == (int, float, bool)
    assert "output_dir" not in kinds  # a string
    assert "dapo" in grpo_fields.choices("loss_type") and grpo_fields.choices("importance_sampling_level") == (
        "token", "sequence")
    default = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")
    assert default in grpo_fields.choices("loss_type")


def test_another_trl_is_read_live(monkeypatch):
    """A snapshot of another TRL version is not used: the facts come from the installed TRL."""
    live = {"trl": "0.0-other", "fields": ["only_this"], "kinds": {}, "choices": {}}
    real_version = importlib.metadata.version
    monkeypatch.setattr(grpo_fields.importlib.metadata, "version",
                        lambda name: "0.0-other" if name == "trl" else real_version(name))
    monkeypatch.setattr(grpo_fields, "from_trl", lambda: live)
    grpo_fields.facts.cache_clear()
    try:
        assert grpo_fields.field_names() == ["only_this"]
    finally:
        monkeypatch.undo()
        grpo_fields.facts.cache_clear()
    assert "beta" in grpo_fields.field_names()  # the snapshot again, for the installed TRL
