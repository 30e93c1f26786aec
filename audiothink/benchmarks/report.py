"""Scores, breakdowns, think statistics, the listening check and the forgetting monitor, as numbers
(``results.json``), text (the printed lines, ``report.md``) and PNG charts."""

from __future__ import annotations

import math
from pathlib import Path

from audiothink.benchmarks.base import Benchmark
from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES
from audiothink.benchmarks.mmau import DIFFICULTIES, TASKS
from audiothink.scoring import format_line, string_match

__all__ = ["score_items", "summarise", "breakdown_lines", "listen_summary", "forced_summary", "forced_lines",
           "forgetting_summary", "quirk_lines", "rubric_lines", "source_lines", "not_comparable", "write_report",
           "write_charts", "paired_bars_figure"]

# Canonical order of known labels; anything else follows alphabetically.
_ORDER = {v: i for i, v in enumerate((*TASKS, *DIFFICULTIES, *MODALITIES, *CATEGORIES))}
_SORT_KEY = lambda v: (_ORDER.get(v, len(_ORDER)), v)  # noqa: E731


def score_items(bench: Benchmark, records: dict[str, dict]) -> list[bool | None]:
    """Per item: the official rule on the recorded prediction; None for items whose answer is withheld.

    The answer and choices are read from the original metadata item, exactly as the official scripts do;
    an item without a record scores as an empty prediction (wrong).
    """
    out: list[bool | None] = []
    for key, item, scored in zip(bench.keys, bench.items, bench.scored):
        if not scored:
            out.append(None)
            continue
        pred = records.get(key, {}).get("prediction", "")
        out.append(string_match(str(item.get("answer", "")), pred, [str(c) for c in item["choices"]]))
    return out


def _stats(idx: list[int], correct: list[bool | None], recs: list[dict]) -> dict:
    n = len(idx)
    scored = [i for i in idx if correct[i] is not None]
    thinks = [i for i in idx if recs[i].get("thinks")]
    direct = [i for i in scored if not recs[i].get("thinks")]
    think_scored = [i for i in scored if recs[i].get("thinks")]

    def acc(ix):
        return sum(bool(correct[i]) for i in ix) / len(ix) if ix else None

    return {
        "n": n,
        "n_scored": len(scored),
        "correct": sum(bool(correct[i]) for i in scored),
        "accuracy": acc(scored),
        "think_rate": len(thinks) / n if n else None,
        "mean_think_tokens": (sum(recs[i].get("think_tokens", 0) for i in thinks) / len(thinks)) if thinks else None,
        "accuracy_think": acc(think_scored),
        "accuracy_no_think": acc(direct),
        "format_failure_rate": sum(recs[i].get("mode") == "malformed" for i in idx) / n if n else None,
        "truncated_rate": sum(bool(recs[i].get("truncated")) for i in idx) / n if n else None,
        "mean_output_tokens": sum(recs[i].get("output_tokens", 0) for i in idx) / n if n else None,
        "failures": sum(bool(recs[i].get("error")) for i in idx),
    }


def summarise(bench: Benchmark, records: dict[str, dict]) -> dict:
    """Overall and per-dimension accuracy (micro average) and think statistics."""
    correct = score_items(bench, records)
    recs = [records.get(k, {"prediction": "", "error": "no prediction"}) for k in bench.keys]
    out = {"overall": _stats(list(range(len(bench))), correct, recs), "by": {}}
    for dim in bench.dimensions:
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(bench.groups):
            groups.setdefault(g[dim], []).append(i)
        out["by"][dim] = {v: _stats(groups[v], correct, recs) for v in sorted(groups, key=_SORT_KEY)}
    return out


def breakdown_lines(bench: Benchmark, summary: dict) -> list[str]:
    """The official scripts' style: one ``name : 12.34% over N samples`` line per slice, then the total."""
    if summary["overall"]["n_scored"] == 0:
        return [f"{bench.name}: answers withheld; no accuracy (submit the submission file for scoring)"]
    lines = []
    for dim, groups in summary["by"].items():
        lines.append(f"[{dim}]")
        lines += [format_line(v, s["correct"], s["n_scored"]) for v, s in groups.items() if s["n_scored"]]
        lines.append("")
    o = summary["overall"]
    lines.append(format_line("Total", o["correct"], o["n_scored"]))
    return lines


def listen_summary(bench: Benchmark, real: dict[str, dict], replaced: dict[str, dict], kind: str) -> dict:
    """Accuracy with the real audio and with the audio replaced, the drop (points), per slice too."""
    c_real, c_rep = score_items(bench, real), score_items(bench, replaced)
    idx = [i for i, c in enumerate(c_real) if c is not None]

    def block(ix):
        if not ix:
            return {"n": 0, "accuracy_real": None, "accuracy_replaced": None, "drop_points": None}
        a = sum(bool(c_real[i]) for i in ix) / len(ix)
        b = sum(bool(c_rep[i]) for i in ix) / len(ix)
        return {"n": len(ix), "accuracy_real": a, "accuracy_replaced": b, "drop_points": 100.0 * (a - b)}

    keys = bench.keys
    changed = sum(real.get(keys[i], {}).get("prediction") != replaced.get(keys[i], {}).get("prediction") for i in idx)
    return {"audio": kind, **block(idx), "answers_changed": changed / len(idx) if idx else None,
            "by": _by_slice(bench, idx, block)}


def _by_slice(bench: Benchmark, idx: list[int], block) -> dict:
    """``block(items)`` for the items of each value of each of the benchmark's dimensions (task, ...)."""
    out = {}
    for dim in bench.dimensions:
        groups: dict[str, list[int]] = {}
        for i in idx:
            groups.setdefault(bench.groups[i][dim], []).append(i)
        out[dim] = {v: block(groups[v]) for v in sorted(groups, key=_SORT_KEY)}
    return out


def forced_summary(bench: Benchmark, free: dict[str, dict], forced: dict[str, dict[str, dict]]) -> dict:
    """Accuracy per slice with each forced mode (``forced``: mode -> its records) next to the free choice.

    Per slice: ``n``, ``free`` (accuracy of the model's own choice), ``free_think_rate``, and for each mode
    its accuracy and mean output tokens (prefill included). What thinking is worth on a slice is the think
    column minus the direct one.
    """
    c_free = score_items(bench, free)
    c_forced = {m: score_items(bench, r) for m, r in forced.items()}
    idx = [i for i, c in enumerate(c_free) if c is not None]

    def block(ix):
        def acc(flags):
            return sum(bool(flags[i]) for i in ix) / len(ix) if ix else None

        out = {"n": len(ix), "free": acc(c_free),
               "free_think_rate": acc([bool(free.get(k, {}).get("thinks")) for k in bench.keys])}
        for m, recs in forced.items():
            out[m] = acc(c_forced[m])
            tokens = [recs.get(bench.keys[i], {}).get("output_tokens", 0) for i in ix]
            out[f"{m}_mean_output_tokens"] = sum(tokens) / len(tokens) if tokens else None
        return out

    return {"modes": list(forced), **block(idx), "by": _by_slice(bench, idx, block)}


def forced_lines(fs: dict) -> list[str]:
    """The forced-mode table as text lines: one row per slice, free choice first, then each forced mode.

    The slice column is as wide as the longest slice name (benchmark labels can be long: MMAR's sub-categories),
    so every column lines up whatever the names.
    """
    modes = fs["modes"]
    rows = [("overall", fs)] + [(f"{dim}={v}", b) for dim, groups in fs["by"].items() for v, b in groups.items()]
    width = max(24, *(len(name) + 2 for name, _ in rows))
    head = (f"{'slice':<{width}}{'n':>5}{'free choice':>14}{'(thinks)':>10}"
            + "".join(f"{'forced ' + m:>16}" for m in modes))

    def row(name, b):
        return (f"{name:<{width}}{b['n']:>5}{_pct(b['free']):>14}{_pct(b['free_think_rate']):>10}"
                + "".join(f"{_pct(b[m]):>16}" for m in modes))

    return [head] + [row(name, b) for name, b in rows]


def forgetting_summary(bench: Benchmark, records: dict[str, dict]) -> dict | None:
    """Mean per-token KL(tuned ‖ base) over all completion tokens of the benchmark (None without it)."""
    recs = [records[k] for k in bench.keys if k in records and "kl_sum" in records[k]]
    tokens = sum(r["kl_tokens"] for r in recs)
    if not recs or not tokens:
        return None
    by = {}
    for dim in bench.dimensions:
        acc: dict[str, list[float]] = {}
        for k, g in zip(bench.keys, bench.groups):
            r = records.get(k)
            if r and "kl_sum" in r:
                a = acc.setdefault(g[dim], [0.0, 0])
                a[0] += r["kl_sum"]
                a[1] += r["kl_tokens"]
        by[dim] = {v: (a[0] / a[1] if a[1] else None) for v, a in sorted(acc.items(), key=lambda kv: _SORT_KEY(kv[0]))}
    return {
        "kl_per_token": sum(r["kl_sum"] for r in recs) / tokens,
        "tokens": tokens,
        "items": len(recs),
        "method": "KL(tuned || base) per completion token, teacher-forced on the tuned model's own greedy "
                  "completions (prompt + audio as in evaluation; up to and including end-of-sequence), "
                  "base = the same model with the adapter disabled; mean over all tokens of all items",
        "by": by,
    }


def quirk_lines(quirks: dict[str, dict]) -> list[str]:
    """One line per tolerated metadata quirk (``base.quirk_summary``): kind, item count, what, first ids."""
    lines = []
    for kind, q in quirks.items():
        more = ", …" if q["items"] > len(q["ids"]) else ""
        lines.append(f"{kind}: {q['items']} item(s): {q['what']} (ids: {', '.join(map(str, q['ids']))}{more})")
    return lines


def source_lines(source: dict | None) -> list[str]:
    """Where a hub copy's items came from and how they compared with the official metadata (``Benchmark.source``):
    one line, then one line per difference. Nothing for the official layout."""
    if not source:
        return []
    from audiothink.benchmarks.hub import difference_line

    where = f"revision {source['revision']}" if source.get("revision") else "revision unknown"
    lines = [f"source: hub copy {source['path']} (layout {source['layout']}, {source['format']}, {where}, "
             f"files sha256 {source['sha256'][:16]})"]
    diffs = source.get("differences") or []
    if not source.get("checked"):
        lines.append("source: not checked against the official metadata (none given): answers and choices are the "
                     "copy's")
    elif not diffs:
        lines.append(f"source: same ids, answers and choices as the official metadata {source['official_metadata']}")
    else:
        lines.append(f"source: {len(diffs)} difference(s) from the official metadata {source['official_metadata']}; "
                     "the official items were scored (benchmark.on_mismatch=official):")
        lines += [f"  {difference_line(d)}" for d in diffs]
    return lines


def not_comparable(a: dict, b: dict) -> list[str]:
    """Why two results.json are not comparable (empty: they are): another benchmark kind or version, other items
    (ids, questions, choices, answers or audio bytes: ``items_sha256``, equal for the official layout and a hub
    copy of the same items), another prompt (``prompt_sha256``), other decoding, or runs limited differently
    (``eval.limit``)."""
    reasons = []
    for key in ("kind", "version", "items", "limited_to", "items_sha256"):
        x, y = a["benchmark"].get(key), b["benchmark"].get(key)
        # limited_to is None for a full run; anything else must be there (older results lack the hashes)
        if x != y or (x is None and key != "limited_to"):
            what = {"items_sha256": "other items (ids, questions, choices, answers or audio)"}.get(key, key)
            reasons.append(f"benchmark {what}: {x!r} vs {y!r}")
    if a.get("prompt_sha256") is None or a.get("prompt_sha256") != b.get("prompt_sha256"):
        reasons.append(f"prompt: {a.get('prompt_sha256')!r} vs {b.get('prompt_sha256')!r}")
    for key in ("do_sample", "temperature", "max_new_tokens", "max_audio_seconds"):
        if a["generation"].get(key) != b["generation"].get(key):
            reasons.append(f"generation {key}: {a['generation'].get(key)!r} vs {b['generation'].get(key)!r}")
    return reasons


def rubric_lines(rs: dict) -> list[str]:
    """The rubric score as text: the official script's ``score=`` style (x100), then the counts."""
    def pts(x):
        return "–" if x is None else f"{100 * x:.2f}"

    lines = [f"rubric score (MMAR-Rubrics, judge {rs['judge']['model']}): {pts(rs['score'])} over "
             f"{rs['n_scored']} thought-out item(s) ({rs['judged']} judged, {rs['wrong_answer']} wrong answer(s) "
             f"at 0)"]
    not_scored = [f"{rs['direct_not_scored']} direct answer(s) (no reasoning to judge)"]
    if rs["no_answer_not_scored"]:
        not_scored.append(f"{rs['no_answer_not_scored']} without an answer in the metadata")
    if rs["failed_not_scored"]:
        why = ", ".join(f"{k} x{v}" for k, v in rs["failure_reasons"].items())
        not_scored.append(f"{rs['failed_not_scored']} the judge could not score ({why}; a rerun judges them again)")
    lines.append("not scored: " + "; ".join(not_scored))
    for dim, groups in rs["by"].items():
        shown = [f"{v} {pts(b['score'])} ({b['n_scored']})" for v, b in groups.items() if b["n_scored"]]
        if shown:  # per slice: score (items scored)
            lines.append(f"[{dim}] " + ", ".join(shown))
    return lines


# --------------------------------------------------------------------------- report.md


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x, fmt="{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def write_report(path: Path, results: dict, charts: list[str]) -> Path:
    s = results["summary"]
    lines = [
        f"# {results['benchmark']['name']} ({results['benchmark']['version']}) — "
        f"{results['model'].get('name') or Path(str(results['model']['path'])).name}",
        "",
        f"- benchmark: `{results['benchmark']['name']}` ({results['benchmark']['kind']}), version "
        f"**{results['benchmark']['version']}**, metadata `{results['benchmark']['meta']}`, "
        f"{results['benchmark']['items']} items",
        f"- model: {results['model'].get('description') or results['model']['path']}",
        f"- decoding: {'sampling, T=' + str(results['generation']['temperature']) if results['generation']['do_sample'] else 'greedy'}, "
        f"max {results['generation']['max_new_tokens']} new tokens, audio clipped at "
        f"{results['generation']['max_audio_seconds']} s ({results['audio']['clips_clipped']} clips were longer)",
        "- scoring: the official MMAU/MMAR rule on the extracted answer text (first `<answer>` block, else the "
        "raw output); micro average",
        f"- submission file: `{results.get('submission')}`",
        f"- items sha256 `{results['benchmark'].get('items_sha256')}`, data sha256 "
        f"`{results['benchmark'].get('data_sha256')}`, prompt sha256 `{results.get('prompt_sha256')}` (two results "
        "are comparable when these, the version and the decoding agree: `report.not_comparable`)",
        *[f"- {line}" for line in source_lines(results["benchmark"].get("source"))],
        "",
        "## Accuracy",
        "",
        "```",
        *results["lines"],
        "```",
        "",
    ]
    rs = results.get("rubric")
    if rs:
        head = rubric_lines(rs)
        lines += [f"**{head[0]}**; {head[1]}.", "",
                  "## Rubric score (MMAR-Rubrics)", "",
                  f"Method: {rs['method']}. Judge `{rs['judge']['model']}` ({rs['judge']['where']}, "
                  f"{rs['judge']['endpoint']} endpoint, seed {rs['judge']['seed']}); rubrics from "
                  f"`{rs['rubric_file']}`, the judge's prompt from `{rs['rubric_script']['path']}`. A fraction "
                  "in [0, 1], shown x100 as the official script prints it; "
                  f"this run judged {rs['run']['judged']} item(s) and took {rs['run']['resumed']} from "
                  "rubric.jsonl.", "",
                  "| slice | items scored | rubric score |", "|---|---:|---:|",
                  f"| **overall** | {rs['n_scored']} | {_num(None if rs['score'] is None else 100 * rs['score'], '{:.2f}')} |"]
        for dim, groups in rs["by"].items():
            lines += [f"| *{dim}* | | |"] + [
                f"| {v} | {b['n_scored']} | {_num(None if b['score'] is None else 100 * b['score'], '{:.2f}')} |"
                for v, b in groups.items()]
        lines.append("")
    quirks = results["benchmark"].get("quirks") or {}
    lines += ["## Quirks of the metadata", ""]
    if quirks:
        lines += ["Accepted as the official scorer accepts them, and scored by the official rule on the released "
                  "item (answer and choices as released):", ""]
        lines += [f"- {line}" for line in quirk_lines(quirks)]
    else:
        lines.append("None of the known quirks (`audiothink/benchmarks/base.py: QUIRKS`).")
    lines += [
        "",
        "## Breakdowns with think statistics",
        "",
    ]
    header = ("| slice | n | accuracy | think rate | mean think tokens | acc. think | acc. no-think | "
              "format failures | truncated |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

    def row(name, st):
        return (f"| {name} | {st['n']} | {_pct(st['accuracy'])} | {_pct(st['think_rate'])} | "
                f"{_num(st['mean_think_tokens'])} | {_pct(st['accuracy_think'])} | {_pct(st['accuracy_no_think'])} | "
                f"{_pct(st['format_failure_rate'])} | {_pct(st['truncated_rate'])} |")

    lines += [header, rule, row("**overall**", s["overall"])]
    for dim, groups in s["by"].items():
        lines += [f"| *{dim}* | | | | | | | | |"] + [row(v, st) for v, st in groups.items()]
    o = s["overall"]
    lines += ["", f"Failures (empty prediction, counted wrong): {o['failures']}. Format-failure rate "
              f"{_pct(o['format_failure_rate'])}: completions that are neither `<think>…</think><answer>…</answer>` "
              "nor `<answer>…</answer>` (they are still scored on their extracted answer).", ""]
    lc = results.get("listen_check")
    if lc:
        lines += [
            f"## Listening check ({lc['audio']})", "",
            f"Same items, audio replaced by {lc['audio']} of the same length. Accuracy with real audio "
            f"{_pct(lc['accuracy_real'])}, with {lc['audio']} {_pct(lc['accuracy_replaced'])}: drop "
            f"**{lc['drop_points']:.2f} points** over {lc['n']} items; {_pct(lc['answers_changed'])} of answers "
            "changed. A model that answers from the audio drops; one that answers from text priors does not.",
            "", "| slice | n | real | replaced | drop (points) |", "|---|---:|---:|---:|---:|",
        ]
        for dim, groups in lc["by"].items():
            lines += [f"| *{dim}* | | | | |"] + [
                f"| {v} | {b['n']} | {_pct(b['accuracy_real'])} | {_pct(b['accuracy_replaced'])} | "
                f"{_num(b['drop_points'], '{:.2f}')} |" for v, b in groups.items()]
        lines.append("")
    fm = results.get("forced_modes")
    if fm:
        lines += [
            "## Forced mode", "",
            "Same items, the reply prefilled with `<think>` (forced think) or `<answer>` (forced direct) after the "
            "prompt; the completion, prefill included, is parsed and scored like any other. Next to them, the "
            "model's own choice and how often it chose to think.", "",
            "| slice | n | free choice | thinks | " + " | ".join(f"forced {m} | {m} tokens" for m in fm["modes"]) + " |",
            "|---|---:|---:|---:|" + "---:|---:|" * len(fm["modes"]),
        ]

        def frow(name, b):
            return (f"| {name} | {b['n']} | {_pct(b['free'])} | {_pct(b['free_think_rate'])} | "
                    + " | ".join(f"{_pct(b[m])} | {_num(b[m + '_mean_output_tokens'])}" for m in fm["modes"]) + " |")

        lines.append(frow("**overall**", fm))
        for dim, groups in fm["by"].items():
            lines += [f"| *{dim}* | | | |" + " | |" * len(fm["modes"])] + [frow(v, b) for v, b in groups.items()]
        lines.append("")
    fg = results.get("forgetting")
    if fg:
        lines += ["## Forgetting monitor", "",
                  f"Mean per-token KL(tuned ‖ base): **{fg['kl_per_token']:.3g} nats** over {fg['tokens']} tokens "
                  f"of {fg['items']} items. Method: {fg['method']}.", ""]
        for dim, groups in fg["by"].items():
            lines.append(f"- by {dim}: " + ", ".join(f"{v} {_num(x, '{:.3g}')}" for v, x in groups.items()))
        lines.append("")
    if charts:
        lines += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    r = results["run"]
    lines += ["## Run", "",
              f"{r['predicted']} items predicted in this run, {r['resumed']} taken from earlier runs; "
              f"{r['items_per_s']:.2f} items/s; device {r['device']}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- charts


def paired_bars_figure(plt, labels, first, second, legend, *, xlim, xlabel, title):
    """Two horizontal bars per label (first above second), each with its value at its end.

    A bar of value 0 still shows: its outline is a line on the axis and its label reads 0.0. The legend sits
    below the axes, outside them, where it covers no bar.
    """
    fig, ax = plt.subplots(figsize=(8, max(2.8, 0.35 * len(labels) + 1.6)), layout="constrained")
    y = range(len(labels))
    edge = {"edgecolor": "black", "linewidth": 1.0}
    for offset, values, name in ((-0.2, first, legend[0]), (0.2, second, legend[1])):
        bars = ax.barh([i + offset for i in y], values, height=0.4, label=name, **edge)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
        for bar, v in zip(bars, values):
            if v == 0:  # a mark in the bar's colour where the bar would start
                ax.plot([0], [bar.get_y() + bar.get_height() / 2], marker="|", markersize=9, markeredgewidth=3,
                        color=bar.get_facecolor(), clip_on=False, zorder=3)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncol=2)
    return fig


def _paired_bars(plt, path: Path, *args, **kwargs) -> None:
    """:func:`paired_bars_figure`, as one PNG."""
    fig = paired_bars_figure(plt, *args, **kwargs)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(out_dir: Path, results: dict) -> list[str]:
    """One PNG per breakdown dimension (accuracy and think rate side by side), plus the listening check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    s = results["summary"]
    title = (f"{results['benchmark']['name']} ({results['benchmark']['version']}) - "
             f"{results['model'].get('name') or Path(str(results['model']['path'])).name}")
    for dim, groups in s["by"].items():
        acc = [100 * (g["accuracy"] or 0) for g in groups.values()]
        think = [100 * (g["think_rate"] or 0) for g in groups.values()]
        name = f"chart_{dim.replace('-', '_')}.png"
        _paired_bars(
            plt, out_dir / name, [f"{lab} (n={g['n']})" for lab, g in groups.items()], acc, think,
            ("accuracy %", "think rate %"), xlim=112, xlabel="%",
            title=f"{title}: accuracy and think rate by {dim}",
        )
        names.append(name)
    lc = results.get("listen_check")
    if lc and lc["by"]:
        dim, groups = next(iter(lc["by"].items()))
        real = [100 * (lc["accuracy_real"] or 0)] + [100 * (g["accuracy_real"] or 0) for g in groups.values()]
        rep = [100 * (lc["accuracy_replaced"] or 0)] + [100 * (g["accuracy_replaced"] or 0) for g in groups.values()]
        labels = [f"overall (n={lc['n']})"] + [f"{v} (n={g['n']})" for v, g in groups.items()]
        _paired_bars(
            plt, out_dir / "chart_listen_check.png", labels, real, rep, ("real audio", lc["audio"]),
            xlim=112, xlabel="accuracy %",
            title=f"{title}: listening check by {dim} (drop {lc['drop_points']:.1f} points)",
        )
        names.append("chart_listen_check.png")
    return names
