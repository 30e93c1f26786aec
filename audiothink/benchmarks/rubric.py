"""The MMAR rubric score: the reasoning of each thought-out MMAR completion, scored by a judge model against
the item's own rubric, with the official method (``code/evaluation_rubrics.py`` of the MMAR repository,
"MMAR-Rubrics", Feb 2026; the Interspeech 2026 Audio Reasoning Challenge scores with it).

The method, step by step as the official script does it:

1. An item whose extracted answer is wrong under the official rule scores 0, without a judge call.
2. An item whose answer is right is sent to the judge ``raters`` times (5): the script's system message and
   the user prompt its prompt function builds from the question, the correct answer, the reference reasoning
   (``thinking``), the cues, the model's reasoning and answer, and the item's rubric (which asks for a JSON
   list, one ``{name, score, justification}`` per criterion); temperature 0, seed 42.
3. A reply is read as the official parser reads it: the outermost ``[ {...} ]`` span (else the whole reply)
   must be a JSON list with one object per criterion, in order, each with a ``name`` (a different name is
   accepted) and a numeric ``score`` that is one of that criterion's ``choices``. Its score is the sum of
   the scores over the sum of each criterion's highest choice (0.2 ... 1.0 for MMAR's five 0/1 criteria).
4. The item's score is the mean of the raters' scores without the highest and the lowest (3 of 5).
5. An item the judge cannot score (every attempt of one rater timed out, failed with an HTTP error, or
   gave a reply that does not parse) gets NO score: it is counted, its reasons named, and left out; the
   rubric score is the mean over the items that got one, reported with their number (the official script
   likewise leaves such items out and asks for a rerun; a rerun here judges only them again).

What differs from the challenge's own run, on purpose: only completions that thought (a ``<think>`` block)
are scored; a direct answer has no reasoning to judge and is counted as not scored (the challenge scores
every submitted item). The judge is whatever OpenAI-compatible server ``eval.rubric_judge`` names (the
challenge uses ``gpt-4o-2024-11-20``): numbers are comparable only under the same judge model.

Nothing of the official material is copied into this project; all of it is read at run time from the
user's MMAR copy: the rubric definitions from ``MMAR-meta.jsonl`` (whose items carry ``thinking``, ``cue`` and
``rubric``; ``eval.rubric_file``), the judge's system message and its prompt function from the official
script itself (``code/evaluation_rubrics.py``; ``eval.rubric_script``; :func:`load_rubric_script` takes only
that constant and those functions from it, never running the script). The scores depend on that wording, so
the judge gets exactly what the user's script would send. The reply parser and the trimmed mean are this
module's own code, doing what the official script's do.

Judged items are kept in ``<run>/rubric.jsonl`` (a :class:`~audiothink.benchmarks.store.PredictionStore`
keyed on each item's prompt text, its header on the judge and on a hash of the script's texts read; per item
its score, each rater's score and the judge's replies, or the failure's reason): a rerun into the same folder
judges only items whose prompt changed or that failed before, and every item again after the script changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiothink.benchmarks.base import Benchmark
from audiothink.plumbing.errors import DataError

__all__ = ["Rubric", "RubricRun", "RubricScript", "load_rubric_script", "load_rubrics", "render_prompt", "parse_reply",
           "trimmed_mean", "probe_rubric_judge", "score_rubric", "rubric_summary"]

log = logging.getLogger("audiothink.evaluate")

#: Bump with any change to how the prompt is called or replies are read: rubric.jsonl records of another version
#: are judged again (a change of the user's script's texts does that by itself: RubricScript.digest).
PROMPT_VERSION = 1

# the official parser's span: from the first "[ {" to the last "} ]"
_JSON_LIST = re.compile(r"\[\s*\{.*\}\s*\]", re.DOTALL)


@dataclass(frozen=True)
class Rubric:
    """One item's rubric definitions: the reference reasoning, the cues (``cue``; a list of strings, empty
    when the item has none) and the criteria (``{"name": str, "scoring_point": str, "choices": [numbers],
    ...}`` each, in the file's order)."""

    thinking: str
    criteria: tuple[Mapping[str, Any], ...]
    cue: tuple[str, ...] = ()


# --------------------------------------------------------------------------- the user's rubric script

#: What is read from the user's copy of the official script: the system message (a string constant) and the
#: function building the user prompt (with the script's own functions it calls).
SYSTEM_NAME = "EVALUATE_SYS_PROMPT"
PROMPT_FUNCTION = "create_evaluation_user_prompt"
#: Its parameters, in the order the official script passes them (evaluate_one_record's call).
PROMPT_PARAMETERS = ("question", "answer", "thinking", "cue", "thinking_prediction", "answer_prediction", "rubric")


@dataclass(frozen=True)
class RubricScript:
    """The judge's texts read from the user's MMAR copy (``code/evaluation_rubrics.py``): ``system`` the system
    message, ``build`` the prompt function (called with :data:`PROMPT_PARAMETERS`, returns the user prompt),
    ``digest`` a hash of the source text of both (stored with the judged items: another text, another
    judgement), ``path`` where they were read, ``functions`` the function names taken from it."""

    system: str
    build: Any
    digest: str
    path: Path
    functions: tuple[str, ...]


def load_rubric_script(path: str | Path, setting: str) -> RubricScript:
    """Read :data:`SYSTEM_NAME` and :data:`PROMPT_FUNCTION` from the official rubric script at ``path``
    without running it (it asks for an API key and may call the API when imported): the constant's assignment
    is read with ``ast.literal_eval``; the function, and the script's top-level functions it calls (``clean``),
    are the only statements compiled, into a namespace of their own. Nothing of the script runs until the
    prompt function is called.

    Raises a one-line DataError (naming ``setting``) when the file is missing, unreadable, not Python, or
    lacks a string constant or the function (with the official parameters).
    """
    import __future__
    import ast
    import inspect

    p = Path(path)
    hint = (f"({setting}; eval.rubric=true reads the judge's system message {SYSTEM_NAME} and its prompt function "
            f"{PROMPT_FUNCTION} from code/evaluation_rubrics.py of the user's MMAR repository copy)")
    if not p.is_file():
        raise DataError(f"{p}: rubric script not found {hint}")
    try:
        source = p.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(p))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
        raise DataError(f"{p}: unreadable as Python ({type(e).__name__}: {str(e).splitlines()[0]}) {hint}") from None
    system_node = None
    functions: dict[str, ast.FunctionDef] = {}
    for node in tree.body:  # top level only; the last definition wins, as when the script runs
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == SYSTEM_NAME
                                                for t in node.targets):
            system_node = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == SYSTEM_NAME:
            system_node = node
        elif isinstance(node, ast.FunctionDef):
            functions[node.name] = node
    if system_node is None or system_node.value is None:
        raise DataError(f"{p}: no top-level {SYSTEM_NAME} = '...' (the judge's system message) {hint}")
    try:
        system = ast.literal_eval(system_node.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        system = None
    if not isinstance(system, str):
        raise DataError(f"{p}:{system_node.lineno}: {SYSTEM_NAME} is not a string constant {hint}")
    if PROMPT_FUNCTION not in functions:
        raise DataError(f"{p}: no top-level function {PROMPT_FUNCTION} (the judge's user prompt) {hint}")
    # the prompt function and, transitively, the script's own functions it names
    wanted, todo = [], [PROMPT_FUNCTION]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.append(name)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    nodes = [functions[n] for n in sorted(wanted, key=lambda n: functions[n].lineno)]
    for node in nodes:
        if node.decorator_list:  # a decorator is code the script would run at definition
            raise DataError(f"{p}:{node.lineno}: {node.name} is decorated; only plain functions are read {hint}")
    module = ast.Module(body=nodes, type_ignores=[])
    namespace: dict[str, Any] = {"__name__": "audiothink_rubric_script"}
    try:
        # annotations unevaluated (they may name the script's imports, which are not run); defaults are evaluated
        code = compile(module, str(p), "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - function definitions only: nothing of their bodies runs here
    except Exception as e:  # noqa: BLE001 - e.g. a default naming something the script imports
        raise DataError(f"{p}: its {PROMPT_FUNCTION} cannot be defined alone ({type(e).__name__}: {e}) {hint}") \
            from None
    build = namespace[PROMPT_FUNCTION]
    try:
        inspect.signature(build).bind(*PROMPT_PARAMETERS)
    except TypeError:
        raise DataError(f"{p}: {PROMPT_FUNCTION}{inspect.signature(build)} does not take the official "
                        f"{len(PROMPT_PARAMETERS)} arguments ({', '.join(PROMPT_PARAMETERS)}) {hint}") from None
    texts = [ast.get_source_segment(source, system_node)] + [ast.get_source_segment(source, n) for n in nodes]
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return RubricScript(system=system, build=build, digest=digest, path=p, functions=tuple(n.name for n in nodes))


def render_prompt(script: RubricScript, question: str, answer: str, rubric: Rubric, thinking_prediction: str,
                  answer_prediction: str) -> str:
    """The user prompt for one item: what the user's script's prompt function returns, called with the
    arguments the official script gives it (the system message is ``script.system``).

    ``question`` and ``answer`` as in the metadata; ``thinking_prediction`` the model's think text and
    ``answer_prediction`` its extracted answer (the submission file's fields of the same names). Raises a
    one-line DataError when the function fails or returns something other than a string.
    """
    try:
        text = script.build(question, answer, rubric.thinking, list(rubric.cue), thinking_prediction,
                            answer_prediction, [dict(c) for c in rubric.criteria])
    except Exception as e:  # noqa: BLE001 - the user's code: whatever it raises, named on one line
        raise DataError(f"{script.path}: {PROMPT_FUNCTION} failed ({type(e).__name__}: {str(e).splitlines()[0]})"
                        if str(e) else f"{script.path}: {PROMPT_FUNCTION} failed ({type(e).__name__})") from None
    if not isinstance(text, str):
        raise DataError(f"{script.path}: {PROMPT_FUNCTION} returned {type(text).__name__}, not the prompt text")
    return text


def parse_reply(reply: str, criteria: Sequence[Mapping[str, Any]]) -> float:
    """One rater's score in [0, 1] from the judge's reply, read as the official parser reads it.

    Raises ValueError naming what is wrong (no JSON list, a criterion missing, a score not among the
    criterion's choices, ...): such a reply gives no score.

    >>> crit = [{"name": "a", "choices": [0, 1]}, {"name": "b", "choices": [0, 1]}]
    >>> parse_reply('Here: [{"name": "a", "score": 1}, {"name": "b", "score": 0}] done', crit)
    0.5
    """
    match = _JSON_LIST.search(reply)
    try:
        result = json.loads(match.group(0) if match else reply)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg})") from None
    if not isinstance(result, list):
        raise ValueError("not a JSON list")
    if len(result) != len(criteria):
        raise ValueError(f"{len(result)} criteria scored, the rubric has {len(criteria)}")
    total = best = 0.0
    for i, (got, criterion) in enumerate(zip(result, criteria)):
        if not isinstance(got, dict) or "name" not in got or "score" not in got:
            raise ValueError(f"criterion {i + 1} has no name and score")
        score = got["score"]
        # the official check: a JSON number (true counts as 1, as Python's isinstance has it) among the choices
        if not isinstance(score, (int, float)):
            raise ValueError(f"criterion {i + 1}: score {score!r} is not a number")
        if score not in criterion["choices"]:
            raise ValueError(f"criterion {i + 1}: score {score!r} is not one of {criterion['choices']}")
        total += score
        best += max(criterion["choices"])
    return total / best if best else 0.0


def trimmed_mean(scores: Sequence[float]) -> float:
    """The raters' mean without the highest and the lowest score (all of them when fewer than 3).

    >>> trimmed_mean([1.0, 0.2, 0.6, 0.6, 0.8])
    0.6666666666666666
    """
    ordered = sorted(scores)
    kept = ordered[1:-1] if len(ordered) >= 3 else ordered
    return sum(kept) / len(kept)


# --------------------------------------------------------------------------- the rubric file


def load_rubrics(path: str | Path, bench: Benchmark, setting: str) -> dict[str, Rubric]:
    """``{item id: Rubric}`` for every item of ``bench``, from the MMAR metadata file at ``path`` (JSONL, or
    a JSON list) whose items carry ``thinking`` and ``rubric``.

    Raises a one-line DataError (naming ``setting``, the config key that gave the path) when the file is
    missing, unreadable, not JSON, or lacks a well-formed rubric for any of ``bench``'s items.
    """
    from audiothink.benchmarks.base import read_metadata

    p = Path(path)
    hint = (f"({setting}; eval.rubric=true reads the rubric definitions from the MMAR metadata, MMAR-meta.jsonl "
            "of the current release, whose items carry 'thinking' and 'rubric')")
    if not p.is_file():
        raise DataError(f"{p}: rubric file not found {hint}")
    try:
        rows, _ = read_metadata(p)
    except DataError as e:
        raise DataError(f"{str(e).splitlines()[0]} {hint}") from None
    found: dict[str, Rubric] = {}
    problems: dict[str | None, str] = {}  # id (None: a row without one) -> its first problem
    for loc, row in rows:
        if not isinstance(row, dict) or "id" not in row:
            problems.setdefault(None, f"{p}:{loc}: not an item with an id")
            continue
        rid = str(row["id"])
        if "rubric" not in row and "thinking" not in row:
            continue  # an item without rubric definitions: a problem only if it is evaluated (below)
        problem = _rubric_problem(row)
        if problem:
            problems.setdefault(rid, f"{p}:{loc} id={rid}: {problem}")
            continue
        found.setdefault(rid, Rubric(thinking=row["thinking"], criteria=tuple(row["rubric"]),
                                     cue=tuple(row.get("cue") or ())))
    wanted = list(dict.fromkeys(s.id for s in bench.samples))
    bad = [problems[i] for i in (None, *wanted) if i in problems]
    if bad:
        raise DataError(f"{len(bad)} item(s) with malformed rubric definitions (first: {bad[0]}) {hint}")
    missing = [i for i in wanted if i not in found]
    if missing:
        ids = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise DataError(f"{p}: {len(missing)} of {len(wanted)} evaluated item(s) have no rubric there (id {ids}) "
                        f"{hint}")
    return {i: found[i] for i in wanted}


def _rubric_problem(row: Mapping[str, Any]) -> str | None:
    """What is wrong with one row's ``thinking`` / ``rubric`` / ``cue`` (None: all usable as the official script
    uses them)."""
    if not isinstance(row.get("thinking"), str):
        return f"thinking: expected a string, got {row.get('thinking')!r:.40}"
    rubric = row.get("rubric")
    if not isinstance(rubric, list) or not rubric:
        return f"rubric: expected a non-empty list of criteria, got {rubric!r:.40}"
    for k, c in enumerate(rubric, start=1):
        if not isinstance(c, dict):
            return f"rubric criterion {k}: expected an object, got {c!r:.40}"
        for name in ("name", "scoring_point"):
            if not isinstance(c.get(name), str):
                return f"rubric criterion {k}: {name}: expected a string"
        choices = c.get("choices")
        if (not isinstance(choices, list) or not choices
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in choices)):
            return f"rubric criterion {k}: choices: expected a non-empty list of numbers, got {choices!r:.40}"
    cue = row.get("cue")  # the prompt function is given the list (the official one joins it)
    if cue is not None and not (isinstance(cue, list) and all(isinstance(x, str) for x in cue)):
        return f"cue: expected a list of strings, got {cue!r:.40}"
    return None


# --------------------------------------------------------------------------- the judge


def probe_rubric_judge(judge, bench: Benchmark, rubrics: Mapping[str, Rubric], script: RubricScript) -> str | None:
    """One request, no retries, before the model loads: the first item's prompt with its own reference
    reasoning as the model's and its answer as the model's; None when the reply parses, else why not."""
    sample, item = bench.samples[0], bench.items[0]
    rubric = rubrics[sample.id]
    text = render_prompt(script, str(item.get("question", "")), str(item.get("answer", "")), rubric,
                         rubric.thinking, str(item.get("answer", "")))
    try:
        [(score, reason)] = asyncio.run(judge.ask([text], lambda r: parse_reply(r, rubric.criteria),
                                                  system=script.system, retries=0))
    except Exception as e:  # noqa: BLE001 - whatever it is, the judge did not answer
        return f"{type(e).__name__}: {e}"
    return reason


@dataclass
class RubricRun:
    """Per item (in benchmark order): ``status`` -- ``judged``, ``wrong_answer`` (0 by the official rule),
    ``direct`` (no ``<think>`` block, or no completion at all: nothing to judge), ``failed`` (the judge gave no
    score), ``no_answer`` (the metadata withholds the answer) --, ``score`` (None unless judged or wrong) and
    ``reason`` (why a failed item got no score); then the items judged in this run, those taken from
    ``rubric.jsonl``, and the HTTP requests sent (retries included)."""

    status: list[str]
    score: list[float | None]
    reason: list[str | None]
    judged_now: int = 0
    resumed: int = 0
    requests: int = 0


def _input(system: str, text: str) -> str:
    return hashlib.sha256(json.dumps([system, text], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _reason_kind(reason: str) -> str:
    """A failure reason without its varying detail, for the counts (``unparsable reply: ...`` -> its kind)."""
    return reason.split(":")[0] if reason.startswith("unparsable reply") else reason


def score_rubric(bench: Benchmark, records: Mapping[str, dict], rubrics: Mapping[str, Rubric], judge,
                 store_path: Path, *, script: RubricScript, raters: int = 5) -> RubricRun:
    """Score every thought-out completion of ``records`` (the predictions store's records) as the module doc
    describes; judged items are stored in ``store_path`` and not judged again by a rerun."""
    from audiothink.benchmarks.report import score_items
    from audiothink.benchmarks.store import PredictionStore, StoreMismatch

    correct = score_items(bench, records)
    n = len(bench)
    run = RubricRun(status=[""] * n, score=[None] * n, reason=[None] * n)
    todo: dict[str, tuple[int, str, Rubric]] = {}
    for i, (key, sample, item) in enumerate(zip(bench.keys, bench.samples, bench.items)):
        rec = records.get(key) or {}
        if not rec.get("thinks") or rec.get("error"):
            run.status[i] = "direct"
        elif correct[i] is None:
            run.status[i] = "no_answer"
        elif not correct[i]:
            run.status[i], run.score[i] = "wrong_answer", 0.0
        else:
            rubric = rubrics[sample.id]
            text = render_prompt(script, str(item.get("question", "")), str(item.get("answer", "")), rubric,
                                 rec.get("think") or "", rec.get("prediction") or "")
            todo[key] = (i, text, rubric)
    header = {"rubric_prompt_version": PROMPT_VERSION, "judge_model": judge.model, "endpoint": judge.endpoint,
              "seed": judge.seed, "max_tokens": judge.max_tokens, "raters": raters,
              # the script's texts: another wording is another judgement, even of an item whose prompt is unchanged
              "rubric_script": script.digest}
    inputs = {key: _input(script.system, text) for key, (_, text, _) in todo.items()}
    words = {"changed": "the reasoning, answer or rubric", "redone": "judged again"}
    try:
        store = PredictionStore(store_path, header, inputs=inputs, **words)
    except StoreMismatch as e:  # another judge or script: its scores are another number, judged anew (not mixed in)
        log.warning("rubric: %s; judging every item again", str(e).split(" Evaluate into")[0])
        store = PredictionStore(store_path, header, inputs=inputs, restart=True, **words)
    ask = [key for key in todo if not store.done(key)]
    run.resumed = len(todo) - len(ask)
    if ask:
        texts = [todo[k][1] for k in ask for _ in range(raters)]
        # each rater's (score, reply): the replies are kept for audit, as the official script keeps them
        parsers = [(lambda r, c=todo[k][2].criteria: (parse_reply(r, c), r)) for k in ask for _ in range(raters)]
        before = getattr(judge, "requests_sent", 0)
        log.info("rubric: judging %d item(s) x %d raters at %s", len(ask), raters, judge.where)
        results = asyncio.run(judge.ask(texts, parsers, system=script.system))
        run.requests = getattr(judge, "requests_sent", 0) - before
        new = []
        for j, key in enumerate(ask):
            mine = results[j * raters:(j + 1) * raters]
            reasons = [r for _, r in mine if r is not None]
            ratings = [value[0] for value, r in mine if r is None]
            # one rater without a score and the item has none: the official script skips it the same way
            new.append({"key": key, "id": bench.samples[todo[key][0]].id, "ratings": ratings,
                        "replies": [value[1] for value, r in mine if r is None],
                        "score": None if reasons else trimmed_mean(ratings),
                        "error": _reason_kind(reasons[0]) if reasons else None})
        store.append(new)
        run.judged_now = len(ask)
    for key, (i, _, _) in todo.items():
        rec = store.records[key]
        if rec.get("error"):
            run.status[i], run.reason[i] = "failed", rec["error"]
        else:
            run.status[i], run.score[i] = "judged", float(rec["score"])
    failed = run.status.count("failed")
    if failed:
        kinds = Counter(r for r in run.reason if r)
        log.warning("rubric: %d of %d item(s) to judge got no score (%s); rerun into the same folder to judge "
                    "them again", failed, len(todo), ", ".join(f"{k} x{v}" for k, v in kinds.most_common()))
    return run


# --------------------------------------------------------------------------- summary


def rubric_summary(bench: Benchmark, run: RubricRun, judge, rubric_file: str | Path, raters: int,
                   script: RubricScript) -> dict:
    """The rubric score, overall and per slice: the mean over the items that got one, a fraction in [0, 1]
    (``report.rubric_lines`` prints it x100, as the official script does), with every count beside it."""

    def block(ix: list[int]) -> dict:
        scored = [run.score[i] for i in ix if run.score[i] is not None]
        return {"score": sum(scored) / len(scored) if scored else None, "n_scored": len(scored)}

    counts = Counter(run.status)
    by = {}
    for dim in bench.dimensions:
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(bench.groups):
            groups.setdefault(g[dim], []).append(i)
        by[dim] = {v: block(ix) for v, ix in groups.items()}
    from audiothink.benchmarks.report import _SORT_KEY

    by = {dim: dict(sorted(groups.items(), key=lambda kv: _SORT_KEY(kv[0]))) for dim, groups in by.items()}
    return {
        **block(list(range(len(bench)))),
        "thought_out": len(bench) - counts["direct"],
        "judged": counts["judged"],
        "wrong_answer": counts["wrong_answer"],
        "direct_not_scored": counts["direct"],
        "no_answer_not_scored": counts["no_answer"],
        "failed_not_scored": counts["failed"],
        "failure_reasons": dict(Counter(r for r in run.reason if r).most_common()),
        "method": "MMAR-Rubrics (evaluation_rubrics.py of the MMAR repository): a wrong answer scores 0; a right "
                  f"one is judged by {raters} raters against the item's rubric, each rater's score the sum of "
                  "its criterion scores over their maximum, the item's the mean without the highest and lowest; "
                  "only completions that thought are scored; items the judge could not score are left out",
        "judge": {"model": judge.model, "where": judge.where, "endpoint": judge.endpoint, "seed": judge.seed,
                  "raters": raters, "prompt_version": PROMPT_VERSION},
        "rubric_file": str(rubric_file),
        "rubric_script": {"path": str(script.path), "digest": script.digest, "functions": list(script.functions)},
        "run": {"judged": run.judged_now, "resumed": run.resumed, "requests": run.requests},
        "by": by,
    }
