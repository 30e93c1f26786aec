"""Training data sources: one entry point from a ``data=`` config to validated samples.

``data.format`` picks the reader; every reader maps its rows onto the unified schema
(:class:`audiothink.data.Sample`) and validates them with :func:`audiothink.data.load_rows`, so
problems are reported (``data.on_error=raise``) or skipped and counted (``skip``) the same way:

- ``unified``: JSON/JSONL in the project's schema (``data=toy``, ``data=jsonl``);
- ``avqa``: AVQA metadata as R1-AQA / Audio-Thinker use it (:mod:`audiothink.sources.avqa`);
- ``hf``: a Hugging Face dataset saved to disk or parquet files (:mod:`audiothink.sources.hf`).

Then ``data.exclude`` drops the training items a list names (:func:`apply_exclude`; the list
``python -m audiothink.curate`` writes of the items the model answers right without their audio), and the
optional abstention transform (:mod:`audiothink.sources.abstain`) runs on the training
items. A clip longer than the model's audio window is what ``data.long_audio`` says
(:class:`audiothink.audio.AudioWindow`): cut to the window (truncate, the default; a warning gives the count),
split into window-long clips of the same prompt (chunk), or a row problem naming the file (error).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiothink.data import DataError, LoadResult, RowChecks, Sample, load_samples
from audiothink.plumbing.errors import ConfigError
from audiothink.sources.mapping import FieldMap

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["FORMATS", "apply_exclude", "check_exclude_path", "load_split", "load_training_data", "read_exclude",
           "setting_source"]

log = logging.getLogger("audiothink")

FORMATS = ("unified", "avqa", "hf")


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain Python (the loaders take dicts and lists)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _unresolved(node: Any, key: str) -> Any:
    try:
        from omegaconf import DictConfig
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return None
    if isinstance(node, DictConfig) and key in node:
        return node._get_node(key)._value()  # the value as written: "${.root}/x.json", "${oc.env:X,d}"
    return None


def setting_source(node: Any, key: str, prefix: str) -> str:
    """Which setting gave ``node[key]`` its value, for a message about the path it names.

    >>> from omegaconf import OmegaConf
    >>> b = OmegaConf.create({"root": "${oc.env:NO_SUCH_ROOT_VAR,data/mmau}", "meta": "${.root}/m.json"})
    >>> setting_source(b, "meta", "benchmark")
    'benchmark.meta = ${.root}/m.json, benchmark.root = data/mmau (the default: NO_SUCH_ROOT_VAR is not set)'
    """
    parts: list[str] = []

    def walk(k: str) -> None:
        raw, value = _unresolved(node, k), node.get(k) if hasattr(node, "get") else None
        if not (isinstance(raw, str) and "${" in raw):
            parts.append(f"{prefix}.{k} = {value}")
            return
        refs = re.findall(r"\$\{\.([\w-]+)\}", raw)
        if refs:
            parts.append(f"{prefix}.{k} = {raw}")
            for ref in refs:
                walk(ref)
            return
        env = re.search(r"oc\.env:([A-Za-z_]\w*)", raw)
        how = "" if env is None else (f" (from {env.group(1)})" if os.environ.get(env.group(1))
                                      else f" (the default: {env.group(1)} is not set)")
        parts.append(f"{prefix}.{k} = {value}{how}")

    walk(key)
    return ", ".join(parts)


def _check_paths(data_cfg: Any, which: str, path: Any, fmt: str) -> None:
    """A data path that is not there: one DataError naming the setting that produced it."""
    p = Path(str(path)).expanduser()
    if fmt == "hf" and any(ch in str(path) for ch in "*?["):
        return  # a glob: the reader says when it matches nothing
    if not p.exists():
        what = "dataset" if fmt == "hf" else "metadata file"
        raise DataError(f"{p}: {what} not found (set by {setting_source(data_cfg, which, 'data')})")


def load_split(data_cfg: Any, which: str, *, max_seconds: float | None,
               checks: RowChecks | None = None) -> LoadResult | None:
    """Load ``data_cfg[which]`` (``"train"`` or ``"eval"``) with the config's reader; None if unset.

    ``checks``: the model's own row checks (audio long enough to give an audio token, no control tokens in
    text, the prompt length), see :class:`audiothink.data.RowChecks`. A path that is not there is named
    with the setting that produced it (``data.train``, ``data.root``, an environment variable).
    """
    path = data_cfg.get(which)
    if not path:
        return None
    fmt = data_cfg.get("format", "unified")
    _check_paths(data_cfg, which, path, fmt)
    try:
        return _read_split(data_cfg, which, path, fmt, max_seconds=max_seconds, checks=checks)
    except DataError as exc:
        audio_root = data_cfg.get("audio_root")
        if audio_root and not Path(str(audio_root)).expanduser().is_dir():
            raise DataError(f"{exc}\n(relative audio paths are joined onto data.audio_root, which is not a "
                            f"folder: {setting_source(data_cfg, 'audio_root', 'data')})") from exc
        raise


def _read_split(data_cfg: Any, which: str, path: Any, fmt: str, *, max_seconds: float | None,
                checks: RowChecks | None) -> LoadResult:
    common = dict(audio_root=data_cfg.get("audio_root"), on_error=data_cfg.get("on_error", "raise"),
                  max_seconds=max_seconds, checks=checks)
    if fmt == "unified":
        return load_samples(path, **common)
    if fmt == "avqa":
        from audiothink.sources.avqa import AVQA_FIELDS, load_avqa

        return load_avqa(
            path, **common,
            question_rewrite=_plain(data_cfg.get("question_rewrite")),
            audio_template=data_cfg.get("audio_template"),
            audio_basename=bool(data_cfg.get("audio_basename", True)),
            fields=FieldMap.from_config(_plain(data_cfg.get("fields")), AVQA_FIELDS),
            answer_format=data_cfg.get("answer_format", "auto"),
        )
    if fmt == "hf":
        from audiothink.sources.hf import load_hf

        cache_dir = data_cfg.get("cache_dir") or Path(os.environ.get("AUDIOTHINK_CACHE", "~/.cache/audiothink")
                                                     ).expanduser() / "hf_audio"
        return load_hf(
            path, **common,
            split=data_cfg.get(f"{which}_split"),
            cache_dir=cache_dir,
            fields=FieldMap.from_config(_plain(data_cfg.get("fields"))),
            answer_format=data_cfg.get("answer_format", "auto"),
            question_rewrite=_plain(data_cfg.get("question_rewrite")),
        )
    raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")


def _log_loaded(which: str, result: LoadResult, max_seconds: float | None, checks: RowChecks | None = None) -> None:
    # the skipped rows themselves were already counted by field in a warning from audiothink.data
    skipped = f" ({len(result.skipped)} skipped, data.on_error=skip)" if result.skipped else ""
    log.info("data: %s: %d of %d rows usable%s", which, len(result.samples), result.rows, skipped)
    if result.clips_too_long:
        from audiothink.audio import long_clips_message

        window = checks.window if checks is not None else None
        if window is not None and window.long_audio == "chunk":
            log.info("data: %s: %s", which, long_clips_message(result.clips_too_long, window.seconds, "chunk"))
        else:
            seconds = window.seconds if window is not None else max_seconds
            log.warning("data: %s: %s", which, long_clips_message(result.clips_too_long, seconds, "truncate"))
    if result.counts.get("questions_rewritten"):
        log.info("data: %s: question_rewrite changed %d questions", which, result.counts["questions_rewritten"])


# --------------------------------------------------------------------------- data.exclude


def check_exclude_path(path: Any) -> None:
    """``data.exclude`` names a readable file (or is null): a ConfigError line, before any data or model loads."""
    if path is None:
        return
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"data.exclude={path!r}: must be the path of an id list (one id a line), or null")
    p = Path(path).expanduser()
    if p.is_dir():
        hint = (f"; the list curate writes is {p / 'text_answerable.txt'}" if (p / "text_answerable.txt").is_file()
                else "")
        raise ConfigError(f"data.exclude={path}: is a folder, not an id list{hint}")
    if not p.is_file():
        raise ConfigError(f"data.exclude={path}: no such file (the id list, one id a line: python -m "
                          "audiothink.curate writes one as <run>/text_answerable.txt)")


def read_exclude(path: str | os.PathLike) -> list[str]:
    """The ids of an exclude list, in file order, each once: one id a line, spaces around it stripped; blank
    lines and lines starting with ``#`` (curate's header) are skipped. DataError when the file cannot be read.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "ids.txt"
    >>> _ = f.write_text("# made by curate\\n a1 \\n\\na2\\na1\\n")
    >>> read_exclude(f)
    ['a1', 'a2']
    """
    check_exclude_path(str(path))
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data.exclude={path}: cannot read the id list ({exc})") from exc
    ids = (line.strip() for line in text.splitlines())
    return list(dict.fromkeys(i for i in ids if i and not i.startswith("#")))


def apply_exclude(samples: list[Sample], path: str | os.PathLike) -> list[Sample]:
    """``samples`` without the ids listed in ``path`` (:func:`read_exclude`), logged as one line with the count
    per task.

    Ids the list names that are not among ``samples`` are a warning with their count and the first few (a list
    made before rows were fixed or skipped still applies); a non-empty list none of whose ids is in the data is
    a DataError: it was made for another data set. Every row dropped is a DataError too: nothing to train on.
    """
    listed = read_exclude(path)
    drop = set(listed)
    kept = [s for s in samples if s.id not in drop]
    dropped = [s for s in samples if s.id in drop]
    found = {s.id for s in dropped}
    unknown = [i for i in listed if i not in found]
    if listed and not dropped:
        raise DataError(f"data.exclude={path}: none of its {len(listed)} ids is a training id (first: "
                        f"{', '.join(listed[:3])}): a list made for another data set?")
    if not kept:
        raise DataError(f"data.exclude={path}: drops every one of the {len(samples)} training rows")
    by_task: dict[str, int] = {}
    for s in dropped:
        by_task[s.task or "no task"] = by_task.get(s.task or "no task", 0) + 1
    tasks = ", ".join(f"{t} {n}" for t, n in sorted(by_task.items()))
    log.info("data: train: data.exclude=%s dropped %d of %d rows (%s); %d left", path, len(dropped), len(samples),
             tasks or "none", len(kept))
    if unknown:
        log.warning("data: train: data.exclude=%s lists %d id(s) that are not training ids (ignored): %s%s", path,
                    len(unknown), ", ".join(unknown[:5]), ", …" if len(unknown) > 5 else "")
    return kept


def load_training_data(data_cfg: Any, *, max_audio_seconds: float | None,
                       checks: RowChecks | None = None) -> tuple[list[Sample], list[Sample]]:
    """``(training samples, held-out samples)`` for a ``data=`` config, logged and transformed (``data.exclude``,
    then ``data.abstain``; held-out items are never changed)."""
    train = load_split(data_cfg, "train", max_seconds=max_audio_seconds, checks=checks)
    if train is None:
        raise ValueError("data.train is not set")
    _log_loaded("train", train, max_audio_seconds, checks)
    samples = train.samples
    if data_cfg.get("exclude") is not None:  # before abstention: the list names the data's own items
        samples = apply_exclude(samples, data_cfg.get("exclude"))

    abstain = data_cfg.get("abstain") or {}
    share = float(abstain.get("share", 0.0) or 0.0)
    if share > 0:
        from audiothink.sources.abstain import DEFAULT_LABEL, add_abstention

        cache = abstain.get("cache_dir") or Path(os.environ.get("AUDIOTHINK_CACHE", "~/.cache/audiothink")
                                                 ).expanduser() / "abstain"
        label = abstain.get("label") or DEFAULT_LABEL
        samples, n = add_abstention(
            samples, share=share, seed=int(abstain.get("seed", 0) or 0), cache_dir=cache, label=label,
            noise_rms=tuple(_plain(abstain.get("noise_rms", (0.01, 0.1)))), max_seconds=max_audio_seconds,
        )
        log.info("data: abstention: %d of %d training items now hear noise and must answer %r; "
                 "that choice was added to every training item", n, len(samples), label)

    held_out = load_split(data_cfg, "eval", max_seconds=max_audio_seconds, checks=checks)
    if held_out is not None:
        _log_loaded("eval", held_out, max_audio_seconds, checks)
    return samples, held_out.samples if held_out is not None else []


def build_dataset(data_cfg: DictConfig, *, prompt: str, max_audio_seconds: float | None, processor=None,
                  model_config=None, max_completion_length: int | None = None, prefill: str = "",
                  chat_template_kwargs=None):
    """Training rows as a `datasets.Dataset`, plus the held-out samples (possibly empty).

    `data.format` picks the reader (unified, avqa, hf; audiothink/sources/), which validates every row,
    logs skips, clipped clips and rewrites, and applies the optional abstention transform (data.abstain).
    With the model's ``processor`` (and ``model_config``, its config.json), rows are also checked against the model
    (:func:`row_checks`): audio too short for the model, control tokens in the text, prompts over
    ``data.max_prompt_tokens`` or the model's context less ``max_completion_length``, counted as the rollouts
    build them (``prefill``, ``chat_template_kwargs``: audiothink.prompts.AudioPrompt).
    """
    from audiothink.audio import AudioError
    from audiothink.data import DataError, to_dataset
    from audiothink.prompts import row_checks

    if data_cfg.generate_toy:
        from audiothink.toy.data import ensure_toy

        ensure_toy(Path(data_cfg.root))
    checks = None
    if processor is not None:
        checks = row_checks(processor, prompt, max_prompt_tokens=data_cfg.get("max_prompt_tokens"),
                            max_audio_seconds=max_audio_seconds, model_config=model_config,
                            max_completion_length=max_completion_length, prefill=prefill,
                            chat_template_kwargs=chat_template_kwargs,
                            long_audio=data_cfg.get("long_audio") or "truncate")
    try:
        train_samples, eval_samples = load_training_data(data_cfg, max_audio_seconds=max_audio_seconds,
                                                         checks=checks)
    except (DataError, AudioError):
        raise
    except ValueError as e:  # a data.* setting that cannot work (unknown format, field, share out of range)
        raise ConfigError(str(e)) from e
    return to_dataset(train_samples, prompt), eval_samples
