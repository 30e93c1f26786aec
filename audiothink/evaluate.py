"""Evaluate a model — the base, or the base plus a trained LoRA adapter — on MMAU, MMAR or the toy.

    python -m audiothink.evaluate benchmark=toy eval.listen_check=noise         # CPU, under a minute
    python -m audiothink.evaluate benchmark=toy model.path=runs/<run>/final eval.force_mode=think   # what thinking is worth
    python -m audiothink.evaluate benchmark=mmau_test_mini model=qwen2_audio_7b model.path=/models/Qwen2-Audio-7B-Instruct
    python -m audiothink.evaluate benchmark=mmar model=qwen2_audio_7b adapter=runs/<run>/final
    python -m audiothink.evaluate benchmark=mmau_test_mini benchmark.source=/data/MMAU-test-mini ...   # a hub copy
    python -m audiothink.evaluate benchmark=mmar ... hydra.run.dir=runs/eval/mmar/<folder>   # resume

Reads top to bottom: config -> benchmark metadata -> audio check -> stored predictions checked against what
is evaluated (the model's and adapter's files, each item's question, choices and audio bytes; store.py) ->
model (+ adapter) -> predictions (batched, greedy, appended to predictions.jsonl as they are made, finished
items skipped on a rerun) ->
listening check (same items, audio replaced) -> forced modes (same items, the reply prefilled with <think>
or <answer>) -> official scores, breakdowns, think statistics, KL to the base -> with eval.rubric=true, the
MMAR rubric score of the thought-out completions (a judge server; its rubric file read and the judge probed
before the model loads; benchmarks/rubric.py) -> submission file, results.json, report.md, charts. The
prompt is training's (configs/train.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from audiothink import CONFIG_DIR
from audiothink.formats import FORCE_PREFILLS
from audiothink.prompts import config_chat_template_kwargs, training_prompt
from audiothink.plumbing.errors import ConfigError
from audiothink.loading import check_model_path, load_model_and_processor
from audiothink.plumbing.cli import register_resolvers
from audiothink.audio import long_clips_message, model_audio_window, short_clip_check

log = logging.getLogger("audiothink.evaluate")
# eval.force_mode -> the forced modes evaluated next to the model's own choice
FORCED_MODES = {None: (), **{m: (m,) for m in FORCE_PREFILLS}, "both": tuple(FORCE_PREFILLS)}


def model_tag(path: str, adapter: str | None = None) -> str:
    """A folder-name-safe tag for what is evaluated: the model's short name, plus the adapter's.

    >>> model_tag("/models/Qwen2-Audio-7B-Instruct", "runs/2026-11-30_10-00-00/final")
    'Qwen2-Audio-7B-Instruct+2026-11-30_10-00-00-final'
    """
    import re

    from audiothink.plot import model_name

    tag = model_name(str(path)) + (f"+{model_name(str(adapter))}" if adapter else "")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", tag).strip("-")[:80] or "model"


def describe_model(path: str, adapter: str | None) -> str:
    """What is evaluated, in words: a base checkpoint, base + adapter, or a fully fine-tuned training output."""
    p = Path(str(path)).expanduser()
    trained = (p / "trainer_state.json").is_file() or (p.parent / "summary.json").is_file() or (
        p.name == "final" and (p.parent / "config.yaml").is_file())
    if adapter:
        return f"{path} + LoRA adapter {adapter}"
    if (p / "audiothink_export.json").is_file():  # python -m audiothink.export
        record = json.loads((p / "audiothink_export.json").read_text(encoding="utf-8"))
        how = "LoRA merged" if record.get("kind") == "merged" else "fully fine-tuned"
        return f"{path} ({how}: exported from training run {record.get('run')})"
    return f"{path} (fully fine-tuned: training run {p.parent})" if trained else f"{path} (base model)"


def register_eval_resolvers() -> None:
    register_resolvers()
    if not OmegaConf.has_resolver("train_prompt"):
        OmegaConf.register_new_resolver("train_prompt", training_prompt)
    if not OmegaConf.has_resolver("model_tag"):
        OmegaConf.register_new_resolver("model_tag", lambda path, adapter=None: model_tag(path, adapter))


register_eval_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from audiothink.plumbing.errors import AudioError, DataError

    try:
        return evaluate(cfg)
    except BaseException as e:
        _remove_if_empty(cfg.output_dir)
        # a user's error is one line and exit 2; the evaluation's own two are imported only when needed (the
        # runner imports torch: a config error stops without it)
        if isinstance(e, (ConfigError, DataError, AudioError)) or isinstance(e, _evaluation_errors()):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def _evaluation_errors() -> tuple[type[BaseException], ...]:
    from audiothink.benchmarks.runner import EvaluationAborted
    from audiothink.benchmarks.store import StoreMismatch

    return StoreMismatch, EvaluationAborted


def _remove_if_empty(out) -> None:
    """A failed evaluation leaves no folder behind when it made the folder and wrote no prediction into it."""
    from audiothink.plumbing.rundir import remove_if_unused

    remove_if_unused(out, ("predictions*.jsonl",))


def evaluate(cfg: DictConfig) -> dict:
    check_eval_config(cfg)  # every value that can be judged alone, before anything is loaded (or imported)
    import torch

    from audiothink.benchmarks import write_submission
    from audiothink.benchmarks.base import quirk_summary
    from audiothink.benchmarks.report import (breakdown_lines, forced_summary, forgetting_summary, listen_summary,
                                               quirk_lines,
                                              summarise, write_charts, write_report)
    from audiothink.benchmarks.runner import GenerationSettings, predict, replace_audio
    from audiothink.benchmarks.store import PredictionStore, folder_fingerprint

    from audiothink.plumbing.console import setup_console

    setup_console()  # as in training: library records through the run's handlers, no loading bars
    rubric_judge = make_rubric_judge(cfg.eval) if cfg.eval.rubric else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    listen = cfg.eval.listen_check
    check_model_path(cfg.model.path)
    if cfg.adapter:
        check_adapter(cfg.adapter, cfg.prompt)

    bench = load_bench(cfg.benchmark).head(cfg.eval.limit)
    if listen and not any(bench.scored):
        raise ConfigError(f"eval.listen_check needs answers; {bench.name} has them withheld")
    rubric_file, rubrics, rubric_script = (prepare_rubric(cfg.eval, bench, rubric_judge)
                                           if rubric_judge is not None else (None, None, None))
    max_seconds = cfg.model.max_audio_seconds
    # the model's audio window and what a longer clip becomes (data.long_audio), training's rule
    window = model_audio_window(cfg.model, cfg.data.long_audio)
    durations, unreadable, clipped = check_audio(bench, cfg.eval.on_audio_error, max_seconds,
                                                 short_clip_check(cfg.model, window),
                                                 audio_from=_audio_from(cfg.benchmark, bench), window=window)
    order = sorted(range(len(bench)), key=lambda i: (-durations[i], i))  # longest first: OOM shows at once
    log.info("%s (%s): %d items, %d clips longer than the model's audio window of %.4g s, %d unusable", bench.name,
             bench.version, len(bench), clipped, window.seconds, len(unreadable))
    long_audio_note(clipped, window)
    quirks = quirk_summary(bench)
    for line in quirk_lines(quirks):  # accepted as the official scorer accepts them; named, never silent
        log.info("metadata quirk %s", line)

    settings = GenerationSettings(batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                                  max_audio_seconds=max_seconds, do_sample=cfg.eval.do_sample,
                                  temperature=cfg.eval.temperature,
                                  # the prompt training rendered (trainer.chat_template_kwargs), like cfg.prompt
                                  chat_template_kwargs=config_chat_template_kwargs(cfg) or None,
                                  long_audio=window.long_audio)
    # Stored predictions are keyed on contents (model and adapter files, each item's question, choices and
    # audio bytes), checked here, before the model loads: another model or settings are refused, changed items
    # predicted again (store.py).
    files = {"model_files": folder_fingerprint(cfg.model.path), "adapter_files": folder_fingerprint(cfg.adapter)}
    if files["model_files"] is None:
        log.warning("model.path=%s is not a local folder: stored predictions can only be matched to it by name",
                    cfg.model.path)
    header = fingerprint(cfg, bench, settings, audio="real", files=files)
    inputs = item_inputs(bench)
    restart = cfg.eval.restart
    store = PredictionStore(out / "predictions.jsonl", header, restart=restart, inputs=inputs)
    listen_store = None
    if listen:
        listen_store = PredictionStore(out / f"predictions_{listen}.jsonl",
                                       {**header, "audio": listen, "seed": cfg.seed}, restart=restart, inputs=inputs)
    forced_stores, forced_settings = {}, {}
    for mode in FORCED_MODES[cfg.eval.force_mode]:
        forced_settings[mode] = dataclasses.replace(settings, force_mode=mode)
        forced_stores[mode] = PredictionStore(out / f"predictions_force_{mode}.jsonl",
                                              {**fingerprint(cfg, bench, forced_settings[mode], audio="real",
                                                             files=files), "force_mode": mode},
                                              restart=restart, inputs=inputs)
    # the folder's config is this run's only once its predictions are known to be this run's (a refused rerun
    # leaves the folder as it was)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    model, processor, device = load_model(cfg)
    common = dict(order=order, unreadable=unreadable, max_failures=cfg.eval.max_failures,
                  progress=cfg.eval.progress)
    print(f"evaluating {bench.name} into {out} (rerun with hydra.run.dir={out} to resume)", flush=True)

    run = predict(model, processor, bench, cfg.prompt, store, settings, kl=bool(cfg.adapter and cfg.eval.kl),
                  kl_micro_batch=cfg.eval.kl_micro_batch, desc=bench.name, **common)
    runs = [run]
    if listen:
        runs.append(predict(model, processor, bench, cfg.prompt, listen_store, settings,
                            audio_transform=replace_audio(listen, cfg.seed), desc=f"{bench.name} ({listen})",
                            **common))
    for mode, forced_store in forced_stores.items():
        runs.append(predict(model, processor, bench, cfg.prompt, forced_store, forced_settings[mode],
                            desc=f"{bench.name} (forced {mode})", **common))

    summary = summarise(bench, store.records)
    rubric = None
    if rubric_judge is not None:  # after every prediction, from the stored records: accuracy is untouched
        from audiothink.benchmarks.rubric import rubric_summary, score_rubric

        raters = cfg.eval.rubric_raters
        rubric = rubric_summary(bench, score_rubric(bench, store.records, rubrics, rubric_judge,
                                                    out / "rubric.jsonl", script=rubric_script, raters=raters),
                                rubric_judge, rubric_file, raters, rubric_script)
    suffix = ".jsonl" if bench.container == "jsonl" else ".json"
    submission = write_submission(bench, store.records, out / f"submission_{bench.meta_path.stem}{suffix}")
    seconds = sum(r.seconds for r in runs)
    predicted = sum(r.predicted + r.failed for r in runs)
    results = {
        "benchmark": {"name": bench.name, "kind": bench.kind, "version": bench.version,
                      "meta": str(bench.meta_path), "items": len(bench), "scored_items": sum(bench.scored),
                      "limited_to": cfg.eval.limit, "quirks": quirks,
                      # where the items came from (a hub copy: its layout, file hash, revision, the official check)
                      # and what decides whether two results are comparable (report.not_comparable)
                      "source": bench.source, "data_sha256": data_sha256(bench),
                      "items_sha256": items_sha256(bench, inputs)},
        "prompt_sha256": prompt_sha256(cfg.prompt, settings.chat_template_kwargs),
        "model": {"path": str(cfg.model.path), "cls": cfg.model.cls, "adapter": cfg.adapter, **files,
                  "name": model_tag(cfg.model.path, cfg.adapter), "description": describe_model(cfg.model.path, cfg.adapter)},
        "prompt": cfg.prompt,
        "generation": {"greedy": not cfg.eval.do_sample, "do_sample": cfg.eval.do_sample,
                       "temperature": cfg.eval.temperature, "max_new_tokens": cfg.eval.max_new_tokens,
                       "batch_size": cfg.eval.batch_size, "max_audio_seconds": max_seconds},
        # clips_clipped: clips longer than the window (cut to it under truncate, split under chunk)
        "audio": {"clips_clipped": clipped, "unreadable": len(unreadable), "long_audio": window.long_audio,
                  "window_seconds": window.seconds},
        "summary": summary,
        "lines": breakdown_lines(bench, summary),
        "rubric": rubric,
        "listen_check": listen_summary(bench, store.records, listen_store.records, listen) if listen else None,
        "forced_modes": (forced_summary(bench, store.records, {m: st.records for m, st in forced_stores.items()})
                         if forced_stores else None),
        "forgetting": forgetting_summary(bench, store.records) if cfg.adapter else None,
        "submission": str(submission),
        "run": {"predicted": predicted, "resumed": sum(r.skipped for r in runs),
                "failed": sum(r.failed for r in runs), "model_calls": sum(r.model_calls for r in runs),
                "seconds": round(seconds, 2), "items_per_s": predicted / seconds if seconds else 0.0,
                "device": str(device), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    charts = write_charts(out, results) if cfg.eval.charts else []
    write_report(out / "report.md", results, charts)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    _print(results)
    return results


# -- steps -------------------------------------------------------------------------------------------------


def check_eval_config(cfg: DictConfig) -> None:
    """The eval.* values and the audio window: one ConfigError line, before the benchmark or model loads."""
    from audiothink.plumbing.validate import check_audio_window, check_eval_settings, check_long_audio

    e = cfg.eval
    check_eval_settings("eval", e.batch_size, max_new_tokens=e.max_new_tokens)
    if e.listen_check not in (None, "noise", "silence"):
        raise ConfigError(f"eval.listen_check={e.listen_check!r}: must be null, noise or silence")
    if e.force_mode not in FORCED_MODES:
        raise ConfigError(f"eval.force_mode={e.force_mode!r}: must be null (the model chooses), think, direct or both")
    if e.limit is not None and (isinstance(e.limit, bool) or not isinstance(e.limit, int) or e.limit < 1):
        raise ConfigError(f"eval.limit={e.limit!r}: must be null (all items) or a whole number >= 1")
    if isinstance(e.kl_micro_batch, bool) or not isinstance(e.kl_micro_batch, int) or e.kl_micro_batch < 1:
        raise ConfigError(f"eval.kl_micro_batch={e.kl_micro_batch!r}: must be a whole number >= 1")
    if isinstance(e.max_failures, bool) or not isinstance(e.max_failures, int) or e.max_failures < 0:
        raise ConfigError(f"eval.max_failures={e.max_failures!r}: must be a whole number >= 0")
    if e.do_sample and not (isinstance(e.temperature, (int, float)) and e.temperature > 0):
        raise ConfigError(f"eval.temperature={e.temperature!r}: must be > 0 when eval.do_sample=true")
    if not isinstance(e.rubric, bool):
        raise ConfigError(f"eval.rubric={e.rubric!r}: must be true or false")
    if isinstance(e.rubric_raters, bool) or not isinstance(e.rubric_raters, int) or e.rubric_raters < 1:
        raise ConfigError(f"eval.rubric_raters={e.rubric_raters!r}: must be a whole number >= 1")
    if e.rubric and e.rubric_script is None:
        raise ConfigError("eval.rubric=true needs eval.rubric_script: the official code/evaluation_rubrics.py of "
                          "your MMAR repository copy (the judge's system message and prompt are read from it), "
                          "e.g. eval.rubric_script=<MMAR repo>/code/evaluation_rubrics.py")
    check_audio_window(cfg.model)
    check_long_audio(cfg.get("data"))
    from audiothink.benchmarks import LOADERS

    if cfg.benchmark.format not in LOADERS:
        raise ConfigError(
            f"benchmark.format={cfg.benchmark.format!r}: must be one of {', '.join(LOADERS)} (mmau and mmar read "
            "the official JSON/JSONL metadata and the audio files it names, unified the project's schema). A "
            "Hugging Face hub copy (parquet or a save_to_disk folder) is read with benchmark=mmau_test_mini, "
            "mmau_test or mmar and benchmark.source=<it> (data_cards/hub_copies.md)")
    check_hub_settings(cfg.benchmark)


def check_hub_settings(b: DictConfig) -> None:
    """benchmark.source / layout / on_mismatch, before anything loads (the toy's config has none of them)."""
    from audiothink.benchmarks.hub import LAYOUTS, ON_MISMATCH

    if b.get("source") is None:
        return
    if b.format not in ("mmau", "mmar"):
        raise ConfigError(f"benchmark.source is a hub copy of MMAU or MMAR; benchmark.format={b.format!r} reads "
                          "neither (use benchmark=mmau_test_mini, mmau_test or mmar)")
    if b.get("layout") is not None and b.layout not in LAYOUTS:
        raise ConfigError(f"benchmark.layout={b.layout!r}: must be null (detect it) or one of {', '.join(LAYOUTS)}")
    if b.get("on_mismatch", "error") not in ON_MISMATCH:
        raise ConfigError(f"benchmark.on_mismatch={b.on_mismatch!r}: must be error or official")



def make_rubric_judge(e: DictConfig):
    """The judge server of ``eval.rubric_judge`` (nothing is sent yet); a bad setting is a ConfigError."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        judge = instantiate(e.rubric_judge)
    except InstantiationException as exc:  # hydra wraps the judge's own ValueError
        cause = exc.__cause__ or exc
        raise ConfigError(f"eval.rubric_judge: {str(cause).splitlines()[0]}") from None
    if not callable(getattr(judge, "ask", None)):
        raise ConfigError(f"eval.rubric_judge: {type(judge).__name__} cannot send the rubric prompt (needs an ask() "
                          "method, as audiothink.judge.OpenAIJudge has)")
    return judge


def prepare_rubric(e: DictConfig, bench, judge):
    """Before the model loads: the judge's texts read from ``eval.rubric_script`` and the rubric definitions of
    every item from ``eval.rubric_file`` (one-line DataError when missing, unreadable or incomplete), then the
    judge probed with one request (a failure stops the run unless ``eval.rubric_judge.on_probe_failure=warn``).
    Returns ``(rubric file, rubrics, rubric script)``."""
    from audiothink.benchmarks.rubric import load_rubric_script, load_rubrics, probe_rubric_judge

    if bench.kind != "mmar":
        raise ConfigError(f"eval.rubric=true scores MMAR completions against MMAR's rubrics; benchmark "
                          f"{bench.name} ({bench.kind}) has none: use benchmark=mmar, or eval.rubric=false")
    path = Path(e.rubric_file) if e.rubric_file is not None else bench.meta_path
    setting = (f"eval.rubric_file={e.rubric_file}" if e.rubric_file is not None
               else "eval.rubric_file=null: the benchmark's metadata file")
    script = load_rubric_script(e.rubric_script, f"eval.rubric_script={e.rubric_script}")
    rubrics = load_rubrics(path, bench, setting)
    problem = probe_rubric_judge(judge, bench, rubrics, script)
    if problem is not None:
        message = f"the rubric judge at {judge.where.replace('judge.', 'eval.rubric_judge.', 1)} failed its start-up probe: {problem}"
        if judge.on_probe_failure == "stop":
            raise ConfigError(f"{message}; start it or fix eval.rubric_judge, or set "
                              "eval.rubric_judge.on_probe_failure=warn to evaluate on (its items then fail, counted)")
        log.warning("%s; evaluating on (eval.rubric_judge.on_probe_failure=warn)", message)
    else:
        log.info("rubric: the judge at %s answers the rubric prompt; rubrics of %d items from %s, the prompt "
                 "from %s (%s)", judge.where, len(rubrics), path, script.path, ", ".join(script.functions))
    return path, rubrics, script


def load_bench(b: DictConfig):
    """The benchmark of ``benchmark.*``; a path that is not there names the setting that produced it."""
    from audiothink.benchmarks import load_benchmark
    from audiothink.data import DataError
    from audiothink.sources import setting_source

    version = b.version
    if b.get("source") is not None:
        return load_hub_bench(b)
    if b.generate_toy:
        from audiothink.toy.data import TOY_VERSION, ensure_toy

        ensure_toy(Path(b.root))
        version = version or f"toy-{TOY_VERSION}"
    meta = b.meta
    if meta is None:  # MMAR: the current .jsonl, else the older .json list
        root = Path(b.root)
        meta = root / "MMAR-meta.jsonl" if (root / "MMAR-meta.jsonl").exists() else root / "MMAR-meta.json"
        if not meta.exists():
            raise DataError(f"{root}: neither MMAR-meta.jsonl nor MMAR-meta.json is there (set by "
                            f"{setting_source(b, 'root', 'benchmark')}); set benchmark.root to the folder holding "
                            "them, or benchmark.meta to the file")
    elif not Path(meta).exists():
        raise DataError(f"{meta}: metadata file not found (set by {setting_source(b, 'meta', 'benchmark')})")
    if Path(meta).is_file():  # every format: a parquet hub copy is named as such, not as bad UTF-8 or JSON
        from audiothink.benchmarks.base import refuse_binary

        try:
            with open(meta, "rb") as f:
                head = f.read(8)
        except OSError:
            head = b""  # the loader names what it cannot read
        refuse_binary(Path(meta), head)
    if b.data_root is not None and not Path(b.data_root).is_dir():
        raise DataError(f"{b.data_root}: audio folder not found (set by "
                        f"{setting_source(b, 'data_root', 'benchmark')})")
    return load_benchmark(b.format, meta, b.data_root, name=b.name, version=version)


def load_hub_bench(b: DictConfig):
    """A hub copy (benchmark.source), checked against the official metadata when that file is there: benchmark.meta,
    for MMAR <root>/MMAR-meta.jsonl (or .json) when meta is null."""
    from audiothink.benchmarks.hub import load_hub
    from audiothink.data import DataError
    from audiothink.sources import setting_source

    meta = b.meta
    if meta is None and b.format == "mmar":
        root = Path(b.root)
        meta = next((root / n for n in ("MMAR-meta.jsonl", "MMAR-meta.json") if (root / n).is_file()), None)
    official = Path(meta) if meta is not None and Path(meta).is_file() else None
    if official is None:
        # said once here and in results.json / report.md: the copy's answers are its own, unchecked
        log.warning("benchmark.source=%s is not checked against the official metadata (no file at %s)", b.source,
                    meta if meta is not None else f"{b.root}/MMAR-meta.jsonl")
    if b.data_root is not None and not Path(b.data_root).is_dir():
        raise DataError(f"{b.data_root}: audio folder not found (set by "
                        f"{setting_source(b, 'data_root', 'benchmark')})")
    return load_hub(b.source, b.format, cache_dir=b.cache_dir, layout=b.layout, split=b.split, data_root=b.data_root,
                    official=official, on_mismatch=b.on_mismatch, name=b.name, version=b.version)


def _audio_from(b: DictConfig, bench) -> str:
    """Where the items' audio paths are joined, and by which setting (for the unusable-audio message)."""
    from audiothink.sources import setting_source

    if b.data_root is None:
        return f"onto the metadata file's folder {bench.meta_path.parent} (benchmark.data_root = null)"
    return f"onto {setting_source(b, 'data_root', 'benchmark')}"


def check_audio(bench, on_error: str, max_seconds: float | None, short_clip=None, *,
                audio_from: str | None = None, window=None) -> tuple[list[float], dict[int, str], int]:
    """Every clip, before the model loads: durations (for ordering), unusable items (unreadable, too short for
    the model: ``short_clip``, :func:`audiothink.audio.short_clip_check`; longer than the model's ``window`` under
    ``data.long_audio=error``: :class:`audiothink.audio.AudioWindow`), clips over the window (``max_seconds``
    without a ``window``). ``audio_from``: where relative audio paths were joined, named in the error."""
    from audiothink.audio import AudioError, audio_info
    from audiothink.data import DataError

    if on_error not in ("raise", "wrong"):
        raise ConfigError(f"eval.on_audio_error must be raise or wrong, got {on_error!r}")
    durations, unreadable, clipped = [], {}, 0
    for i, s in enumerate(bench.samples):
        total = 0.0
        for path in s.audio:
            try:
                seconds, _, _ = audio_info(path, row_id=s.id)
            except AudioError as e:
                unreadable[i] = str(e)
                continue
            if short_clip is not None and (short := short_clip(path, seconds, s.id)):
                unreadable[i] = short
                continue
            if window is not None and (too_long := window.problem(path, seconds, s.id)):
                unreadable[i] = too_long
                continue
            total += seconds
            clipped += window.too_long(seconds) if window is not None else bool(max_seconds and seconds > max_seconds)
        durations.append(total)
    if unreadable and on_error == "raise":
        msgs = list(unreadable.values())
        more = f"\n… and {len(msgs) - 50} more" if len(msgs) > 50 else ""
        joined = f"; relative audio paths are joined {audio_from}" if audio_from else ""
        raise DataError(f"{len(msgs)} item(s) of {bench.name} have unusable audio "
                        f"(eval.on_audio_error=wrong keeps them as wrong answers{joined}):\n" + "\n".join(msgs[:50])
                        + more)
    if unreadable:
        log.warning("%d item(s) have unusable audio: empty predictions, counted wrong", len(unreadable))
    return durations, unreadable, clipped


def load_training_benchmark(cfg: DictConfig, short_clip=None):
    """The benchmark ``eval.benchmark`` scores during training (its first ``eval.limit`` items), or None. Its
    metadata is read and every clip checked (unusable audio is a DataError naming the items) before the model
    loads, as ``python -m audiothink.evaluate`` does; answers withheld (MMAU test) is a ConfigError."""
    value = cfg.eval.get("benchmark")
    if value is None:
        return None
    from audiothink.heldout_eval import benchmark_config

    bench = load_bench(benchmark_config(value)).head(cfg.eval.get("limit"))
    if not any(bench.scored):
        raise ConfigError(f"eval.benchmark={value}: {bench.name} has its answers withheld: nothing to score during "
                          "training (choose one with answers, e.g. mmau_test_mini)")
    check_audio(bench, "raise", cfg.model.max_audio_seconds, short_clip)
    return bench


def long_audio_note(clipped: int, window) -> None:
    """The count of clips over the model's window, as a warning under truncate (audio the model does not hear)."""
    if not clipped:
        return
    # chunk hears every clip whole: information; truncate drops audio the model never hears: a warning
    (log.info if window.long_audio == "chunk" else log.warning)(long_clips_message(clipped, window.seconds,
                                                                                 window.long_audio))


def check_adapter(adapter: str, prompt: str) -> None:
    p = Path(adapter).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise ConfigError(f"adapter={adapter!r}: no adapter_config.json there (a fully fine-tuned run is "
                          "evaluated with model.path=<run>/final)")
    for run_cfg in (p.parent / "config.yaml", p.parent.parent / "config.yaml"):
        if run_cfg.is_file():
            trained = (yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}).get("prompt")
            if trained is not None and trained != prompt:
                log.warning("the adapter's run (%s) was trained with another prompt; pass prompt=... to match it",
                            run_cfg)
            break


def load_model(cfg: DictConfig):
    import torch

    model, processor = load_model_and_processor(cfg.model)
    if cfg.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(cfg.adapter).expanduser()))
    device = torch.device("cuda" if cfg.eval.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.eval.device == "auto" else cfg.eval.device))
    model.to(device)
    model.eval()
    return model, processor, device


def fingerprint(cfg: DictConfig, bench, settings, *, audio: str, files: dict | None = None) -> dict:
    """Everything that decides every prediction: a predictions file made under other values is not reused.

    ``files``: ``model_files`` / ``adapter_files``, the contents of model.path and the adapter
    (:func:`audiothink.benchmarks.store.folder_fingerprint`): new weights at the same path are another model.
    What decides one item's prediction (its question, choices, audio bytes) is in each record instead
    (:func:`item_inputs`)."""
    return {
        "benchmark": bench.name, "meta": str(bench.meta_path.resolve()), "version": bench.version,
        "model": str(cfg.model.path), "adapter": cfg.adapter, "prompt": cfg.prompt,
        "max_new_tokens": settings.max_new_tokens, "max_audio_seconds": settings.max_audio_seconds,
        "do_sample": settings.do_sample, "temperature": settings.temperature if settings.do_sample else None,
        "dtype": cfg.model.dtype, "audio": audio, **(files or {}),
        # only when set: a folder predicted without them keeps its header (and resumes)
        **({"chat_template_kwargs": settings.chat_template_kwargs} if settings.chat_template_kwargs else {}),
        # only when not truncate (what every folder predicted before the setting existed did): another split of
        # the long clips is another prompt
        **({"long_audio": settings.long_audio} if settings.long_audio != "truncate" else {}),
    }


def item_inputs(bench) -> dict[str, str]:
    """Item key -> the fingerprint of what the model is shown: question, choices and every clip's bytes."""
    from audiothink.benchmarks.store import file_sha256, item_fingerprint

    clips = [path for s in bench.samples for path in s.audio]
    digests = iter(file_sha256(clips))
    return {key: item_fingerprint(s.question, s.choices, [next(digests) for _ in s.audio])
            for key, s in zip(bench.keys, bench.samples)}


def data_sha256(bench) -> str:
    """The sha256 of the files the items were read from: the official metadata file, or the hub copy's files."""
    from audiothink.benchmarks.store import file_sha256

    if bench.source is not None:
        return bench.source["sha256"]
    return file_sha256([bench.meta_path])[0] or ""


def items_sha256(bench, inputs: dict[str, str]) -> str:
    """A hash of what is scored: every item's key, what the model is shown (question, choices, audio bytes:
    ``inputs``, :func:`item_inputs`) and the released answer and choices the official rule reads. Equal for an
    official layout and a hub copy of the same items."""
    import hashlib

    rows = [[k, inputs.get(k), str(item.get("answer") or ""), [str(c) for c in item.get("choices") or []]]
            for k, item in zip(bench.keys, bench.items)]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


def prompt_sha256(prompt: str, chat_template_kwargs: dict | None = None) -> str:
    """A hash of the prompt template and the chat-template settings it is rendered with."""
    import hashlib

    text = json.dumps({"prompt": prompt, "chat_template_kwargs": chat_template_kwargs or None}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _print(results: dict) -> None:
    from audiothink.benchmarks.report import quirk_lines, source_lines

    b, s = results["benchmark"], results["summary"]["overall"]
    print(f"\n{b['name']} ({b['version']}), {b['items']} items"
          + (f" (limited to the first {b['limited_to']})" if b["limited_to"] else "")
          + f"; model {results['model']['description']}")
    print("\n".join(results["lines"]))
    for line in source_lines(b.get("source")):
        print(line)
    for line in quirk_lines(b.get("quirks") or {}):
        print(f"metadata quirk (accepted, as by the official scorer) {line}")

    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}%"

    think_tokens = "–" if s["mean_think_tokens"] is None else f"{s['mean_think_tokens']:.1f}"
    print(f"think rate {pct(s['think_rate'])}, mean think length {think_tokens} tokens, "
          f"format failures {pct(s['format_failure_rate'])}, failures {s['failures']}")
    lc = results["listen_check"]
    if lc:
        print(f"listening check ({lc['audio']}): real {pct(lc['accuracy_real'])} -> {lc['audio']} "
              f"{pct(lc['accuracy_replaced'])}, drop {lc['drop_points']:.2f} points over {lc['n']} items")
    fm = results["forced_modes"]
    if fm:
        from audiothink.benchmarks.report import forced_lines

        print("forced mode (reply prefilled with <think> / <answer>): accuracy by slice, next to the free choice")
        print("\n".join(forced_lines(fm)))
    if results.get("rubric"):
        from audiothink.benchmarks.report import rubric_lines

        print("\n".join(rubric_lines(results["rubric"])))
    fg = results["forgetting"]
    if fg:
        print(f"forgetting monitor: KL(tuned || base) {fg['kl_per_token']:.3g} nats/token over {fg['tokens']} tokens")
    r = results["run"]
    print(f"predicted {r['predicted']} items this run ({r['items_per_s']:.2f} items/s), resumed {r['resumed']}; "
          f"submission: {results['submission']}")


if __name__ == "__main__":
    from audiothink.plumbing.cli import run_checked

    run_checked("evaluate", main)  # unknown keys and options: one line, a suggestion, exit 2
