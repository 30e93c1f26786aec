"""List the training items a model answers right without their audio, so that training can leave them out.

    python -m audiothink.curate                      # the toy's 2,000 training items, CPU, a few minutes
    python -m audiothink.curate model=qwen2_audio_7b model.path=/models/Qwen2-Audio-7B-Instruct data=avqa
    python -m audiothink.train data.exclude=runs/curate/<run>/text_answerable.txt ...   # then train without them

Why: an item whose answer the model finds without listening earns the accuracy reward without listening,
and GRPO reinforces whatever earned it: such items teach a model not to use the audio (AudioMCQ's best MMAR
came from filtering them out).

How "right without audio" is measured. Each training item (data.train, read and checked as training reads
it) is answered with its audio once (greedy, the choices as written), then with every clip replaced by
silence of the same length (the listening check's replacement, audiothink.benchmarks.runner.replace_audio)
in ``curate.rotations`` orders of its choices: as written, rotated by one, by two, ... (at most one order per
choice). An item is listed when its silent answer is right, by the accuracy reward's rule
(audiothink.scoring.is_correct), in at least ``curate.min_right_share`` of its orders (0.75: 3 of 4, 3 of 3,
2 of 2), whatever its answer with audio. Why so:

* one greedy answer is right by chance on about one item in n (n choices) for a model that guesses by
  position ("always A"), and such a guess is no shortcut in the text; across orders the gold option visits
  different positions, so a positional guess is right in at most one order, a text shortcut in all;
* greedy, not sampled: the answer the model is most sure of, the same on every run (``curate.do_sample``
  reads one sample per order instead, what a rollout earns);
* regardless of the answer with audio: the reward is paid for the silent answer either way. The answer with
  audio is recorded beside it (curate.jsonl, summary.json), so that the items the audio would have
  corrected or misled can be told apart.

A prior the model holds whatever the text (a toy model that answers "one" to every silent counting
question) is right without audio on every item whose answer it is, and these items are listed: for that
model they pay without listening, which is what the list is for.

Outputs, in the run folder: text_answerable.txt (the listed ids, one a line, after a ``#`` header; give it to
``data.exclude``), curate.jsonl (per item: the answer with audio, the silent answer per order, listed or
not), summary.json (counts per task, the settings), predictions*.jsonl (the raw answers; a rerun into the
same folder resumes from them, as evaluation does). Down-weighting instead of dropping is not offered: it needs
a per-item weight in the loss or in TRL's sampler, which the trainer does not have; scaling an item's rewards
instead cancels out under the recipe's per-group standardisation (trainer.scale_rewards=group) and would need
a weight column the data set does not carry. To keep some of them, list fewer ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from audiothink import CONFIG_DIR
from audiothink.evaluate import register_eval_resolvers

log = logging.getLogger("audiothink.curate")
register_eval_resolvers()  # ${train_prompt:}, ${model_tag:...}, ${toy_model_dir:}

LIST_FILE = "text_answerable.txt"


@hydra.main(config_path=str(CONFIG_DIR), config_name="curate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from audiothink.benchmarks.runner import EvaluationAborted
    from audiothink.benchmarks.store import StoreMismatch
    from audiothink.plumbing.errors import USER_ERRORS
    from audiothink.plumbing.rundir import remove_if_unused

    try:
        return curate(cfg)
    except (*USER_ERRORS, StoreMismatch, EvaluationAborted) as e:
        print(f"error: {e}", file=sys.stderr)
        remove_if_unused(cfg.output_dir, ("predictions*.jsonl",))
        sys.exit(2)
    except BaseException:
        remove_if_unused(cfg.output_dir, ("predictions*.jsonl",))
        raise


def curate(cfg: DictConfig) -> dict:
    import torch

    from audiothink.benchmarks.runner import GenerationSettings, predict, replace_audio
    from audiothink.benchmarks.store import PredictionStore, folder_fingerprint
    from audiothink.evaluate import item_inputs
    from audiothink.loading import load_model_and_processor, load_processor
    from audiothink.plumbing.console import setup_console
    from audiothink.prompts import config_chat_template_kwargs, config_long_audio

    setup_console()
    c = cfg.curate
    check_curate_config(cfg)  # every value that can be judged alone, before anything is loaded
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)

    processor = load_processor(cfg.model)  # checks model.path; the rows are checked against it
    bench = load_items(cfg, processor)
    settings = GenerationSettings(batch_size=c.batch_size, max_new_tokens=c.max_new_tokens,
                                  max_audio_seconds=cfg.model.max_audio_seconds, do_sample=c.do_sample,
                                  temperature=c.temperature,
                                  chat_template_kwargs=config_chat_template_kwargs(cfg) or None,
                                  long_audio=config_long_audio(cfg))  # the clips training will hear
    header = {"data": bench.name, "model": str(cfg.model.path), "model_files": folder_fingerprint(cfg.model.path),
              "prompt": cfg.prompt, "max_new_tokens": c.max_new_tokens,
              "max_audio_seconds": cfg.model.max_audio_seconds, "do_sample": c.do_sample,
              "temperature": c.temperature if c.do_sample else None, "dtype": cfg.model.dtype,
              **({"chat_template_kwargs": settings.chat_template_kwargs} if settings.chat_template_kwargs else {}),
              "long_audio": settings.long_audio}
    real = PredictionStore(out / "predictions.jsonl", {**header, "audio": "real"}, restart=c.restart,
                           inputs=item_inputs(bench), restart_key="curate.restart")
    orders = [rotated(bench, r) for r in range(c.rotations)]
    orders = [b for b in orders if len(b)]  # rotation r exists for items with more than r choices
    silent = [PredictionStore(out / f"predictions_{c.replace}_r{r}.jsonl",
                              {**header, "audio": c.replace, "seed": cfg.seed, "rotation": r},
                              restart=c.restart, inputs=item_inputs(b), restart_key="curate.restart")
              for r, b in enumerate(orders)]
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    model, processor = load_model_and_processor(cfg.model, processor)
    device = torch.device("cuda" if c.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if c.device == "auto" else c.device))
    model.to(device).eval()
    print(f"curating {len(bench)} items of {bench.name} into {out} (rerun with hydra.run.dir={out} to resume)",
          flush=True)
    common = dict(max_failures=c.max_failures, progress=c.progress)
    runs = [predict(model, processor, bench, cfg.prompt, real, settings, desc="with audio", **common)]
    for r, (b, store) in enumerate(zip(orders, silent)):
        runs.append(predict(model, processor, b, cfg.prompt, store, settings, desc=f"{c.replace}, order {r}",
                            audio_transform=replace_audio(c.replace, cfg.seed), **common))

    rows = judge(bench, real.records, orders, [s.records for s in silent], c.min_right_share)
    summary = summarise(rows, cfg, bench, seconds=sum(r.seconds for r in runs))
    write_outputs(out, rows, summary)
    print("\n".join(summary_lines(summary, out)))
    return summary


# -- steps -------------------------------------------------------------------------------------------------


def check_curate_config(cfg: DictConfig) -> None:
    """The curate.* values, the audio window and data.exclude's path: one ConfigError line, before anything loads."""
    from audiothink.plumbing.errors import ConfigError
    from audiothink.plumbing.validate import check_audio_window, check_eval_settings

    c = cfg.curate
    check_eval_settings("curate", c.batch_size, max_new_tokens=c.max_new_tokens)
    whole = {"rotations": 1, "max_failures": 0}
    for key, low in whole.items():
        v = c.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"curate.{key}={v!r}: must be a whole number >= {low}")
    share = c.min_right_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ConfigError(f"curate.min_right_share={share!r}: must be a share in (0, 1] of the choice orders")
    if c.replace not in ("silence", "noise"):
        raise ConfigError(f"curate.replace={c.replace!r}: must be silence or noise")
    if c.do_sample and not (isinstance(c.temperature, (int, float)) and c.temperature > 0):
        raise ConfigError(f"curate.temperature={c.temperature!r}: must be > 0 when curate.do_sample=true")
    if c.limit is not None and (isinstance(c.limit, bool) or not isinstance(c.limit, int) or c.limit < 1):
        raise ConfigError(f"curate.limit={c.limit!r}: must be null (all items) or a whole number >= 1")
    check_audio_window(cfg.model)
    if cfg.data.get("exclude") is not None or (cfg.data.get("abstain") or {}).get("share"):
        # the list is about the data as it is: not a previous list's remainder, nor abstention's noise items
        log.warning("curate: data.exclude and data.abstain are not applied; every training item is answered")


def load_items(cfg: DictConfig, processor):
    """The training items of ``data.train``, checked as training checks them, as a Benchmark (task breakdown)."""
    from audiothink.benchmarks.base import Benchmark
    from audiothink.loading import load_model_config
    from audiothink.prompts import config_chat_template_kwargs, config_long_audio, row_checks
    from audiothink.sources import load_split

    if cfg.data.generate_toy:
        from audiothink.toy.data import ensure_toy

        ensure_toy(Path(cfg.data.root))
    checks = row_checks(processor, cfg.prompt, max_prompt_tokens=cfg.data.get("max_prompt_tokens"),
                        max_audio_seconds=cfg.model.max_audio_seconds, model_config=load_model_config(cfg.model),
                        max_completion_length=cfg.curate.max_new_tokens,
                        chat_template_kwargs=config_chat_template_kwargs(cfg), long_audio=config_long_audio(cfg))
    loaded = load_split(cfg.data, "train", max_seconds=cfg.model.max_audio_seconds, checks=checks)
    if loaded is None:
        from audiothink.plumbing.errors import ConfigError

        raise ConfigError("data.train is not set: curation answers the training items")
    samples = loaded.samples[: cfg.curate.limit]
    skipped = f", {len(loaded.skipped)} skipped (data.on_error=skip)" if loaded.skipped else ""
    log.info("data: train: %d of %d rows usable%s%s", len(loaded.samples), loaded.rows, skipped,
             f"; the first {len(samples)} curated (curate.limit)" if len(samples) < len(loaded.samples) else "")
    return Benchmark(name=str(cfg.data.train), kind="unified", version="train", meta_path=Path(str(cfg.data.train)),
                     samples=samples, items=[{} for _ in samples],
                     groups=[{"task": s.task or "no task"} for s in samples], dimensions=("task",))


def rotated(bench, r: int):
    """The items with more than ``r`` choices, their choices rotated left by ``r`` (``r=0``: as written).

    >>> rot = lambda cs, r: tuple(cs[r:]) + tuple(cs[:r])
    >>> rot(("low", "middle", "high"), 1)
    ('middle', 'high', 'low')
    """
    from audiothink.benchmarks.base import Benchmark

    idx = [i for i, s in enumerate(bench.samples) if len(s.choices) > r]
    samples = [dataclasses.replace(bench.samples[i], choices=bench.samples[i].choices[r:] + bench.samples[i].choices[:r])
               for i in idx]
    return Benchmark(name=bench.name, kind=bench.kind, version=bench.version, meta_path=bench.meta_path,
                     samples=samples, items=[bench.items[i] for i in idx], groups=[bench.groups[i] for i in idx],
                     dimensions=bench.dimensions, keys=[bench.keys[i] for i in idx])


def needed(orders: int, share: float) -> int:
    """Whole orders a silent answer must be right in: ``share`` of ``orders``, rounded up (at least one).

    >>> [needed(n, 0.75) for n in (1, 2, 3, 4)]
    [1, 2, 3, 3]
    """
    return max(1, math.ceil(share * orders - 1e-9))


def _right(rec: dict | None, sample) -> bool:
    from audiothink.scoring import is_correct

    return bool(rec) and not rec.get("error") and bool(is_correct(rec["output"], sample.answer, sample.choices))


def judge(bench, real: dict[str, dict], orders: list, silent: list[dict[str, dict]], share: float) -> list[dict]:
    """One row per item: its answer with audio, its silent answer in each order, and whether it is listed."""
    by_order = [dict(zip(b.keys, b.samples)) for b in orders]
    rows = []
    for key, s in zip(bench.keys, bench.samples):
        rec = real.get(key)
        answers = [{"order": r, "choices": list(by_order[r][key].choices),
                    "prediction": (store.get(key) or {}).get("prediction", ""),
                    "right": _right(store.get(key), by_order[r][key])}
                   for r, store in enumerate(silent) if key in by_order[r]]
        right = sum(a["right"] for a in answers)
        rows.append({"id": s.id, "task": s.task or "no task", "answer": s.answer,
                     "with_audio": {"prediction": (rec or {}).get("prediction", ""), "right": _right(rec, s)},
                     "without_audio": answers, "right_without_audio": right, "orders": len(answers),
                     "listed": right >= needed(len(answers), share)})
    return rows


def summarise(rows: list[dict], cfg: DictConfig, bench, *, seconds: float) -> dict:
    def block(rs: list[dict]) -> dict:
        listed = [r for r in rs if r["listed"]]
        return {"items": len(rs), "listed": len(listed), "listed_share": len(listed) / len(rs) if rs else 0.0,
                "listed_right_with_audio": sum(r["with_audio"]["right"] for r in listed),
                "right_with_audio": sum(r["with_audio"]["right"] for r in rs),
                "right_without_audio_as_written": sum(bool(r["without_audio"]) and r["without_audio"][0]["right"]
                                                      for r in rs)}

    tasks = sorted({r["task"] for r in rows})
    c = cfg.curate
    return {"data": bench.name, "model": str(cfg.model.path),
            "rule": {"replace": c.replace, "rotations": c.rotations, "min_right_share": c.min_right_share,
                     "greedy": not c.do_sample, "temperature": c.temperature if c.do_sample else None},
            "overall": block(rows), "by_task": {t: block([r for r in rows if r["task"] == t]) for t in tasks},
            "seconds": round(seconds, 2)}


def write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    with open(out / "curate.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rule = summary["rule"]
    tasks = ", ".join(f"{t} {b['listed']}/{b['items']}" for t, b in summary["by_task"].items())
    head = [f"# items {summary['model']} answers right without their audio (python -m audiothink.curate)",
            f"# data {summary['data']}; every clip replaced by {rule['replace']}; right in >= "
            f"{rule['min_right_share']} of up to {rule['rotations']} choice orders "
            f"({'greedy' if rule['greedy'] else 'sampled at ' + str(rule['temperature'])})",
            f"# {summary['overall']['listed']} of {summary['overall']['items']} items; per task: {tasks}",
            f"# train without them: python -m audiothink.train data.exclude={out / LIST_FILE}"]
    ids = [r["id"] for r in rows if r["listed"]]
    (out / LIST_FILE).write_text("\n".join(head + ids) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def summary_lines(summary: dict, out: Path) -> list[str]:
    def pct(n, d):
        return f"{100 * n / d:.1f}%" if d else "–"

    lines = ["", f"{'task':<16} {'items':>6} {'right with audio':>17} {'right silent':>13} {'listed':>14}"]
    for name, b in [*summary["by_task"].items(), ("all", summary["overall"])]:
        lines.append(f"{name:<16} {b['items']:>6} {pct(b['right_with_audio'], b['items']):>17} "
                     f"{pct(b['right_without_audio_as_written'], b['items']):>13} "
                     f"{b['listed']:>6} ({pct(b['listed'], b['items'])})")
    lines += [f"right silent: the silent answer to the choices as written; listed: right silent in >= "
              f"{summary['rule']['min_right_share']} of the choice orders ({summary['seconds']:.0f} s)",
              f"list: {out / LIST_FILE}  (train without them: data.exclude={out / LIST_FILE})"]
    return lines


if __name__ == "__main__":
    from audiothink.plumbing.cli import run_checked

    run_checked("curate", main)  # unknown keys and options: one line, a suggestion, exit 2
