"""python -m audiothink.evaluate ... eval.rubric=true end to end with the toy model on the MMAR fixture and a
local fake judge server: the rubric score beside accuracy (results.json, report.md, the printed lines),
accuracy the same with the rubric on and off, a rerun judging nothing again, and every problem of the rubric
setup found before the model loads, as one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audiothink.evaluate as evaluate_module
from audiothink.data import DataError
from audiothink.formats import extract_answer, parse
from audiothink.plumbing.errors import ConfigError
from tests.helpers import (REASONING_HEAD, REPO, RUBRIC_SCRIPT, RUBRIC_SYSTEM, make_mmar_fixture, make_mmau_fixture,
                           make_rubric_file, make_rubric_script, rubric_reply, run_eval)
from tests.reward_testing import FakeJudgeServer, closed_port_url, completion_body


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOTHINK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def mmar(tmp_path):
    meta = make_mmar_fixture(tmp_path / "mmar")
    return meta, make_rubric_file(meta, tmp_path / "MMAR-rubrics.jsonl")


@pytest.fixture
def script(tmp_path):
    return make_rubric_script(tmp_path / "evaluation_rubrics.py")


def _mmar(meta) -> list[str]:
    return ["benchmark=mmar", f"benchmark.root={meta.parent}", "eval.batch_size=7", "eval.max_new_tokens=24",
            "eval.charts=false"]


def _rubric(rubric_file, url, script=None) -> list[str]:
    script = script or make_rubric_script(Path(rubric_file).parent / "evaluation_rubrics.py")
    return ["eval.rubric=true", f"eval.rubric_file={rubric_file}", f"eval.rubric_script={script}",
            f"eval.rubric_judge.base_url={url}",
            "eval.rubric_judge.timeout_s=10", "eval.rubric_judge.retries=0", "eval.rubric_judge.backoff_s=0.01",
            # the fake server's listen backlog is 5: more connections at once are reset now and then (ReadError)
            "eval.rubric_judge.max_concurrency=4"]


def _unchanged(on: dict, off: dict) -> None:
    """Accuracy, breakdowns and think statistics identical; the rubric only beside them."""
    assert on["summary"] == off["summary"] and on["lines"] == off["lines"]
    assert off["rubric"] is None and on["rubric"] is not None


def test_direct_answers_are_counted_not_scored_and_accuracy_is_unchanged(tmp_path, mmar, capsys):
    """The toy answers the fixture directly (no <think>): nothing is judged, every item is counted as a direct
    answer, and the predictions, submission and accuracy are those of the same run without the rubric."""
    meta, rubric_file = mmar
    off = run_eval(tmp_path / "off", *_mmar(meta))
    with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(1, 2)), 0.0)) as server:
        on = run_eval(tmp_path / "on", *_mmar(meta), *_rubric(rubric_file, server.url))
    _unchanged(on, off)
    assert len(server.requests) == 1  # the start-up probe, about the first item
    # the probe: the user's script's system message and prompt, about the first item
    system, probe = (m["content"] for m in server.requests[0][1]["messages"])
    assert system == RUBRIC_SYSTEM
    assert probe == ("Q: Question 0 about the clip? | right answer: clip one | reference: reference reasoning for 0000 "
                     f"| cues: tone\nGrade each point:\n* Cue: the tone [0, 1]: Award 1 point if the reasoning names "
                     "the tone.\n* Reasoning chain [0, 1, 2]: Award 1 point per sound step from the tone to the "
                     f"answer.\n{REASONING_HEAD}reference reasoning for 0000 The answer is clip one.")
    rs = on["rubric"]
    assert (rs["score"], rs["n_scored"], rs["direct_not_scored"], rs["thought_out"]) == (None, 0, 14, 0)
    records = [(tmp_path / d / "predictions.jsonl").read_text().splitlines()[1:] for d in ("off", "on")]
    strip = [[{k: v for k, v in json.loads(x).items()} for x in r] for r in records]
    assert strip[0] == strip[1]
    assert (Path(on["submission"]).read_text() == Path(off["submission"]).read_text())
    assert "not scored: 14 direct answer(s)" in capsys.readouterr().out


# item index -> the reasoning and answer written into the stored predictions (what a thinking model said)
THOUGHT = {0: ("GOOD", "clip one"), 1: ("GOOD", "clip two"), 2: ("GOOD", "clip two"),  # 2 is wrong
           3: ("VARY", "clip two"), 4: ("GARBLED", "clip one")}
VARY = [(1, 2), (0, 0), (1, 1), (0, 1), (1, 1)]  # trimmed mean 5/9


def _judge_server():
    seen = {"VARY": 0}

    def behave(prompt):
        if f"{REASONING_HEAD}VARY" in prompt:
            seen["VARY"] += 1
            return 200, completion_body(rubric_reply(*VARY[(seen["VARY"] - 1) % 5])), 0.0
        if f"{REASONING_HEAD}GARBLED" in prompt:
            return 200, completion_body("a fine chain of thought, 4/5"), 0.0
        return 200, completion_body(rubric_reply(1, 2)), 0.0

    return FakeJudgeServer(behave)


def _think_in_place(folder: Path) -> None:
    """Rewrite items of THOUGHT in the folder's predictions as thought-out completions (parsed as the runner
    parses them), so the evaluation resumes with them."""
    path = folder / "predictions.jsonl"
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        rec = json.loads(line)
        k = int(rec["id"])
        if k in THOUGHT:
            marker, answer = THOUGHT[k]
            output = f"<think>{marker} reasoning about question {k}</think><answer>{answer}</answer>"
            p = parse(output)
            rec.update(output=output, mode=p.mode, thinks=p.thinks, think=p.think, prediction=extract_answer(output))
        out.append(json.dumps(rec))
    path.write_text("\n".join(out) + "\n")


def test_thought_out_completions_are_scored_beside_accuracy_and_not_judged_again(tmp_path, mmar, capsys):
    meta, rubric_file = mmar
    run_eval(tmp_path / "off", *_mmar(meta))
    _think_in_place(tmp_path / "off")
    shutil.copytree(tmp_path / "off", tmp_path / "on")
    off = run_eval(tmp_path / "off", *_mmar(meta))  # resumed: every prediction from the file
    assert off["run"]["resumed"] == 14 and off["summary"]["overall"]["correct"] >= 4
    with _judge_server() as server:
        on = run_eval(tmp_path / "on", *_mmar(meta), *_rubric(rubric_file, server.url))
        first = len(server.requests)
        again = run_eval(tmp_path / "on", *_mmar(meta), *_rubric(rubric_file, server.url))
        second = len(server.requests) - first
    _unchanged(on, off)
    rs = on["rubric"]
    # 0, 1: 1.0; 2: a wrong answer, 0; 3: 5/9; 4: the judge's reply does not parse, no score
    assert rs["score"] == pytest.approx((1 + 1 + 0 + 5 / 9) / 4) and rs["n_scored"] == 4
    assert (rs["judged"], rs["wrong_answer"], rs["failed_not_scored"], rs["direct_not_scored"]) == (3, 1, 1, 9)
    assert rs["failure_reasons"] == {"unparsable reply": 1}
    assert first == 1 + 4 * 5  # the probe; 5 raters for each of the 4 right answers
    # the rerun: the probe, and only the item without a score judged again (it fails again)
    assert second == 1 + 5 and again["rubric"]["run"] == {"judged": 1, "resumed": 3, "requests": 5}
    assert {k: v for k, v in again["rubric"].items() if k != "run"} == {k: v for k, v in rs.items() if k != "run"}
    stored = json.loads((tmp_path / "on" / "results.json").read_text())
    assert stored["rubric"]["score"] == pytest.approx(rs["score"])
    report = (tmp_path / "on" / "report.md").read_text()
    assert "**rubric score (MMAR-Rubrics, judge gpt-4o-2024-11-20): 63.89 over 4 thought-out item(s)" in report
    assert "## Rubric score (MMAR-Rubrics)" in report and "| **overall** | 4 | 63.89 |" in report
    printed = capsys.readouterr().out
    assert "63.89 over 4 thought-out item(s) (3 judged, 1 wrong answer(s) at 0)" in printed
    assert "1 the judge could not score (unparsable reply x1; a rerun judges them again)" in printed


# --------------------------------------------------------------------------- before the model loads


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(evaluate_module, "load_model", lambda cfg: pytest.fail("the model was loaded"))


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def test_rubric_setup_problems_stop_before_the_model_loads(tmp_path, mmar, no_model):
    meta, rubric_file = mmar
    with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(1, 2)), 0.0)) as server:
        with pytest.raises(DataError) as e:
            run_eval(tmp_path / "a", *_mmar(meta), *_rubric(tmp_path / "missing.jsonl", server.url))
        assert "missing.jsonl: rubric file not found (eval.rubric_file=" in _one_line(e)
        # null: the benchmark's own metadata, here without rubrics in the release's format
        with pytest.raises(DataError) as e:
            run_eval(tmp_path / "b", *_mmar(meta), *_rubric(rubric_file, server.url), "eval.rubric_file=null")
        assert "eval.rubric_file=null: the benchmark's metadata file" in _one_line(e)
        with pytest.raises(ConfigError) as e:
            run_eval(tmp_path / "c", "benchmark=mmau_test_mini",
                     f"benchmark.meta={make_mmau_fixture(tmp_path / 'mmau')}", *_rubric(rubric_file, server.url))
        assert "eval.rubric=true scores MMAR completions" in _one_line(e)
        with pytest.raises(ConfigError) as e:
            run_eval(tmp_path / "d", *_mmar(meta), *_rubric(rubric_file, server.url), "eval.rubric_raters=0")
        assert "eval.rubric_raters=0" in _one_line(e)
        with pytest.raises(ConfigError) as e:
            run_eval(tmp_path / "e", *_mmar(meta), *_rubric(rubric_file, "localhost:8000"))
        assert "eval.rubric_judge: judge.base_url='localhost:8000'" in _one_line(e)
        with pytest.raises(ConfigError) as e:
            run_eval(tmp_path / "h", *_mmar(meta), *_rubric(rubric_file, server.url), "eval.rubric_script=null")
        assert "eval.rubric=true needs eval.rubric_script" in _one_line(e)
        good = RUBRIC_SCRIPT.format(system="judge")
        for k, (text, expected) in enumerate([
                (good.replace("def create_evaluation_user_prompt(", "def f("),
                 "no top-level function create_evaluation_user_prompt"),
                (good.replace("EVALUATE_SYS_PROMPT", "SYSTEM"), "no top-level EVALUATE_SYS_PROMPT")]):
            bad = make_rubric_script(tmp_path / f"bad{k}.py", text=text)
            with pytest.raises(DataError) as e:
                run_eval(tmp_path / f"i{k}", *_mmar(meta), *_rubric(rubric_file, server.url, bad))
            assert f"{bad}: {expected}" in _one_line(e) and f"(eval.rubric_script={bad};" in _one_line(e)
        with pytest.raises(DataError) as e:
            run_eval(tmp_path / "j", *_mmar(meta), *_rubric(rubric_file, server.url, tmp_path / "nope.py"))
        assert "nope.py: rubric script not found (eval.rubric_script=" in _one_line(e)
        assert server.requests == []  # found before the judge is asked
    with pytest.raises(ConfigError) as e:
        run_eval(tmp_path / "f", *_mmar(meta), *_rubric(rubric_file, closed_port_url()))
    assert "failed its start-up probe: ConnectError" in _one_line(e)
    with FakeJudgeServer(lambda p: (200, completion_body("looks good to me"), 0.0)) as server:
        with pytest.raises(ConfigError) as e:
            run_eval(tmp_path / "g", *_mmar(meta), *_rubric(rubric_file, server.url))
        assert "failed its start-up probe: unparsable reply: invalid JSON" in _one_line(e)
    assert not any((tmp_path / d).exists() and any((tmp_path / d).glob("predictions*"))
                   for d in [*"abcdefghj", "i0", "i1"])


@pytest.mark.parametrize("broken", ["rubric_file", "rubric_script"])
def test_a_missing_rubric_file_or_prompt_function_is_one_line_and_exit_2(tmp_path, mmar, script, broken):
    meta, rubric_file = mmar
    nope = tmp_path / "nope.jsonl"
    if broken == "rubric_script":  # the user's script without the prompt function
        text = RUBRIC_SCRIPT.format(system="judge").replace("def create_evaluation_user_prompt(", "def f(")
        script = make_rubric_script(tmp_path / "no_function.py", text=text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "audiothink.evaluate", *_mmar(meta), "eval.rubric=true",
                          f"eval.rubric_file={nope if broken == 'rubric_file' else rubric_file}",
                          f"eval.rubric_script={script}", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    if broken == "rubric_file":
        assert errors == [f"error: {nope}: rubric file not found (eval.rubric_file={nope}; eval.rubric=true reads "
                          "the rubric definitions from the MMAR metadata, MMAR-meta.jsonl of the current release, "
                          "whose items carry 'thinking' and 'rubric')"]
    else:
        assert errors == [f"error: {script}: no top-level function create_evaluation_user_prompt (the judge's user "
                          f"prompt) (eval.rubric_script={script}; eval.rubric=true reads the judge's system message "
                          "EVALUATE_SYS_PROMPT and its prompt function create_evaluation_user_prompt from "
                          "code/evaluation_rubrics.py of the user's MMAR repository copy)"]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
