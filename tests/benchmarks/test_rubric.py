"""audiothink.benchmarks.rubric: the MMAR rubric score (the official evaluation_rubrics.py method) against a
local OpenAI-compatible server: known replies give the known score, failures (timeouts, garbled replies,
HTTP errors) are counted and never scored, a rerun judges only what has no score yet."""

from __future__ import annotations

import json
import threading

import pytest

from audiothink.benchmarks import load_mmar
from audiothink.benchmarks.report import rubric_lines
from audiothink.benchmarks.rubric import (Rubric, load_rubric_script, load_rubrics, parse_reply, render_prompt,
                                          rubric_summary, score_rubric, trimmed_mean)
from audiothink.data import DataError
from audiothink.judge import OpenAIJudge
from tests.helpers import (REASONING_HEAD, RUBRIC_CRITERIA, RUBRIC_SCRIPT, RUBRIC_SYSTEM, make_mmar_fixture,
                           make_rubric_file, make_rubric_script, prediction_records, rubric_reply)
from tests.reward_testing import FakeJudgeServer, completion_body

CRIT = RUBRIC_CRITERIA


# --------------------------------------------------------------------------- the prompt and the reply


def _script(tmp_path, **kw):
    return load_rubric_script(make_rubric_script(tmp_path / "evaluation_rubrics.py", **kw), "eval.rubric_script=x")


def test_prompt_is_the_users_scripts(tmp_path):
    """The system message and the user prompt are what the user's script has and its prompt function returns
    (called as the official script calls it); only the function and the script's functions it calls are taken
    from the script: its imports and other statements (a missing module, a SystemExit) never run."""
    script = _script(tmp_path)
    assert script.system == RUBRIC_SYSTEM
    assert script.functions == ("tidy", "create_evaluation_user_prompt")
    rubric = Rubric(thinking="the tone is low, so the answer is low", criteria=tuple(CRIT), cue=("tone", "pitch"))
    text = render_prompt(script, "Is the tone low or high?", "low", rubric, "I hear a tone.\n   It is low.",
                         "low")
    assert text == """Q: Is the tone low or high? | right answer: low | reference: the tone is low, so the answer is low \
| cues: tone, pitch
Grade each point:
* Cue: the tone [0, 1]: Award 1 point if the reasoning names the tone.
* Reasoning chain [0, 1, 2]: Award 1 point per sound step from the tone to the answer.
Reasoning to judge:
I hear a tone.
It is low. The answer is low."""


def _script_error(path) -> str:
    with pytest.raises(DataError) as e:
        load_rubric_script(path, "eval.rubric_script=x")
    assert "\n" not in str(e.value) and "eval.rubric_script=x" in str(e.value)
    return str(e.value)


def test_a_script_without_what_is_needed_is_one_line(tmp_path):
    good = RUBRIC_SCRIPT.format(system="judge")
    assert "rubric script not found" in _script_error(tmp_path / "nope.py")
    assert "rubric script not found" in _script_error(tmp_path)  # a folder
    cases = {
        "def broken(:\n": "unreadable as Python (SyntaxError",
        good.replace("EVALUATE_SYS_PROMPT = ", "OTHER_PROMPT = "): "no top-level EVALUATE_SYS_PROMPT",
        good.replace('EVALUATE_SYS_PROMPT = "judge"', "EVALUATE_SYS_PROMPT = load_prompt()"):
            "EVALUATE_SYS_PROMPT is not a string constant",
        good.replace("def create_evaluation_user_prompt(", "def make_prompt("): "no top-level function "
                                                                                 "create_evaluation_user_prompt",
        good.replace("answer_prediction: str, rubric)", "answer_prediction: str)"): "does not take the official 7",
        good.replace("def tidy(", "@cache\ndef tidy("): "tidy is decorated",
    }
    for k, (text, expected) in enumerate(cases.items()):
        path = make_rubric_script(tmp_path / f"s{k}.py", text=text)
        assert expected in _script_error(path), text


def test_a_failing_prompt_function_is_one_line(tmp_path):
    script = _script(tmp_path)
    rubric = Rubric(thinking="t", criteria=({"name": "a", "choices": [0, 1]},))  # no scoring_point
    with pytest.raises(DataError, match="create_evaluation_user_prompt failed \\(KeyError: 'scoring_point'\\)$"):
        render_prompt(script, "q", "a", rubric, "r", "a")


REPLIES = [
    # (reply, score, or the start of the reason it gives none)
    (rubric_reply(1, 2), 1.0, None),
    (rubric_reply(0, 1), 1 / 3, None),
    (rubric_reply(1.0, 0), 1 / 3, None),  # 1.0 is among [0, 1] (Python's ==, as the official check)
    (json.dumps([{"name": "another name", "score": 1}, {"name": "x", "score": 2}]), 1.0, None),  # names not checked
    ("[" + rubric_reply(1, 2).split("[", 1)[1], 1.0, None),
    ("the reasoning is good", None, "invalid JSON"),
    (json.dumps({"name": "Cue: the tone", "score": 1}), None, "not a JSON list"),
    (json.dumps([{"name": "Cue: the tone", "score": 1}]), None, "1 criteria scored, the rubric has 2"),
    (rubric_reply(2, 2), None, "criterion 1: score 2 is not one of [0, 1]"),
    (rubric_reply(1, 0.5), None, "criterion 2: score 0.5 is not one of"),
    (rubric_reply("1", 2), None, "criterion 1: score '1' is not a number"),
    (json.dumps([{"name": "a"}, {"name": "b", "score": 1}]), None, "criterion 1 has no name and score"),
]


@pytest.mark.parametrize("reply,score,reason", REPLIES)
def test_reply_parsing(reply, score, reason):
    if reason is None:
        assert parse_reply(reply, CRIT) == pytest.approx(score)
    else:
        with pytest.raises(ValueError, match="^" + reason.replace("[", r"\[")):
            parse_reply(reply, CRIT)


def test_trimmed_mean_drops_the_highest_and_lowest():
    assert trimmed_mean([1.0, 0.0, 2 / 3, 1 / 3, 2 / 3]) == pytest.approx(5 / 9)
    assert trimmed_mean([0.5, 1.0]) == 0.75  # fewer than 3 raters: the plain mean


# --------------------------------------------------------------------------- the rubric file


def _bench(tmp_path):
    meta = make_mmar_fixture(tmp_path / "mmar")
    return load_mmar(meta), make_rubric_file(meta, tmp_path / "rubrics.jsonl")


def test_rubric_file_is_read_and_its_problems_are_one_line(tmp_path):
    b, path = _bench(tmp_path)
    rubrics = load_rubrics(path, b, "eval.rubric_file=x")
    assert len(rubrics) == 14 and rubrics["0003"].thinking == "reference reasoning for 0003"
    assert [c["name"] for c in rubrics["0003"].criteria] == [c["name"] for c in CRIT]

    def error(p) -> str:
        with pytest.raises(DataError) as e:
            load_rubrics(p, b, "eval.rubric_file=x")
        assert "\n" not in str(e.value) and "eval.rubric_file=x" in str(e.value)
        return str(e.value)

    assert "rubric file not found" in error(tmp_path / "nope.jsonl")
    assert "rubric file not found" in error(tmp_path)  # a folder
    (tmp_path / "bad.jsonl").write_text('{"id": "0000"\n')
    assert "invalid JSON" in error(tmp_path / "bad.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    assert "2 of 14 evaluated item(s) have no rubric there (id 0012, 0013)" in error(tmp_path / "few.jsonl")
    rows[5]["rubric"][1] = {**CRIT[1], "choices": ["0", "1"]}
    (tmp_path / "malformed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "id=0005: rubric criterion 2: choices" in error(tmp_path / "malformed.jsonl")
    # the fixture's own metadata has an old-style rubric (a list of strings) on some items: refused, named
    assert "id=0000: rubric criterion 1: expected an object" in error(b.meta_path)


# --------------------------------------------------------------------------- against a fake judge server

# think text marker -> what the server does with every request whose prompt holds it
MARKERS = ("GOOD", "VARY", "SLOW", "GARBLED", "OFFGRID", "HTTP", "FLAKY")
VARY = [(1, 2), (0, 0), (1, 1), (0, 1), (1, 1)]  # 1, 0, 2/3, 1/3, 2/3: trimmed mean 5/9


class RubricServer:
    """The fake server's behaviour for the rubric prompt, by the marker in the model's reasoning."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, prompt: str):
        marker = next((m for m in MARKERS if f"{REASONING_HEAD}{m}" in prompt), None)
        with self.lock:
            n = self.seen[marker] = self.seen.get(marker, 0) + 1
        if marker == "VARY":
            return 200, completion_body(rubric_reply(*VARY[(n - 1) % 5])), 0.0
        if marker == "SLOW":
            return 200, completion_body(rubric_reply(1, 2)), 2.0
        if marker == "GARBLED":
            return 200, completion_body("The reasoning is mostly fine, I would give it a 2."), 0.0
        if marker == "OFFGRID":
            return 200, completion_body(rubric_reply(2, 2)), 0.0
        if marker == "HTTP":
            return 500, "internal error", 0.0
        if marker == "FLAKY" and n == 1:
            return 503, "busy", 0.0
        return 200, completion_body(rubric_reply(1, 2)), 0.0


# key -> (prediction, think): items 0..7 thought; 2 is wrong; 8..13 answer directly
ANSWERS = ["clip two" if k % 2 else "clip one" for k in range(14)]
PLAN = {0: "GOOD", 1: "VARY", 2: "GOOD", 3: "SLOW", 4: "GARBLED", 5: "HTTP", 6: "OFFGRID", 7: "FLAKY"}


def _records(b, plan=PLAN):
    predictions = [("clip two" if k == 2 else ANSWERS[k]) if k in plan else ANSWERS[k] if k % 3 else "clip three"
                   for k in range(14)]
    thinks = {b.keys[k]: f"{marker} reasoning about question {k}" for k, marker in plan.items()}
    return prediction_records(b, predictions, thinks)


def _judge(url, **kw):
    # the timeout leaves good replies room on a loaded machine; SLOW replies come after 2 s
    # max_concurrency 4: the fake server's listen backlog is 5, more connections at once are reset now and then
    kw = {"endpoint": "chat", "timeout_s": 1.5, "retries": 1, "backoff_s": 0.01, "retry_unparsable": True,
          "max_tokens": 512, "seed": 42, "model": "rubric-judge", "max_concurrency": 4, **kw}
    return OpenAIJudge(base_url=url, **kw)


def test_known_replies_give_the_official_score_and_failures_are_counted(tmp_path):
    b, path = _bench(tmp_path)
    rubrics = load_rubrics(path, b, "x")
    script = _script(tmp_path)
    records = _records(b)
    with FakeJudgeServer(RubricServer()) as server:
        judge = _judge(server.url)
        run = score_rubric(b, records, rubrics, judge, tmp_path / "rubric.jsonl", script=script, raters=5)
    assert run.status == ["judged", "judged", "wrong_answer", "failed", "failed", "failed", "failed", "judged",
                          *["direct"] * 6]
    assert run.score[:3] == [1.0, pytest.approx(5 / 9), 0.0] and run.score[7] == 1.0
    assert run.score[3:7] == [None] * 4 and run.score[8:] == [None] * 6
    assert run.reason[3:7] == ["timeout after 1.5 s", "unparsable reply", "HTTP 500", "unparsable reply"]
    stored = {r["key"]: r for r in map(json.loads, (tmp_path / "rubric.jsonl").read_text().splitlines()[1:])}
    assert sorted(stored["0001"]["ratings"]) == pytest.approx([0.0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    assert len(stored["0001"]["replies"]) == 5 and stored["0001"]["error"] is None
    assert stored["0003"]["score"] is None and stored["0003"]["error"] == "timeout after 1.5 s"
    rs = rubric_summary(b, run, judge, path, 5, script)
    # the mean over the 4 items that got a score: 1, 5/9, 0 (wrong answer), 1
    assert rs["score"] == pytest.approx((1 + 5 / 9 + 0 + 1) / 4) and rs["n_scored"] == 4
    assert (rs["judged"], rs["wrong_answer"], rs["failed_not_scored"], rs["direct_not_scored"]) == (3, 1, 4, 6)
    assert rs["thought_out"] == 8
    assert rs["failure_reasons"] == {"unparsable reply": 2, "timeout after 1.5 s": 1, "HTTP 500": 1}
    # per slice as the official script breaks it down: sound = items 0 and 7, speech = 2 (wrong) and 9 (direct)
    assert rs["by"]["modality"]["sound"] == {"score": 1.0, "n_scored": 2}
    assert rs["by"]["modality"]["speech"] == {"score": 0.0, "n_scored": 1}
    lines = rubric_lines(rs)
    assert lines[0].startswith("rubric score (MMAR-Rubrics, judge rubric-judge): 63.89 over 4 thought-out item(s)")
    assert "6 direct answer(s)" in lines[1] and "4 the judge could not score" in lines[1]
    # what was sent: 5 raters per judged item, retries on failures, nothing for wrong or direct answers
    payloads = [p for _, p, _ in server.requests]
    prompts = [p["messages"][1]["content"] for p in payloads]
    assert all(p["messages"][0] == {"role": "system", "content": RUBRIC_SYSTEM} for p in payloads)
    # the user prompt: what the script's function returns for the item
    item = b.items[0]
    assert prompts.count(render_prompt(script, item["question"], item["answer"], rubrics["0000"],
                                       "GOOD reasoning about question 0", "clip one")) == 5
    assert prompts[0].startswith("Q: Question ") and REASONING_HEAD in prompts[0]
    assert all(p["seed"] == 42 and p["temperature"] == 0.0 and p["model"] == "rubric-judge" for p in payloads)
    count = {k: sum(f"about question {k} " in p for p in prompts) for k in range(14)}
    judged_or_not = {k: count[k] for k in (0, 1, 2, 7, *range(8, 14))}
    assert judged_or_not == {0: 5, 1: 5, 2: 0, 7: 6, **dict.fromkeys(range(8, 14), 0)}
    assert all(5 <= count[k] <= 10 for k in (3, 4, 5, 6)), count  # every rater tried, then retried once
    assert run.requests == judge.requests_sent >= len(server.requests)


def test_a_rerun_judges_only_what_has_no_score(tmp_path):
    b, path = _bench(tmp_path)
    rubrics = load_rubrics(path, b, "x")
    script = _script(tmp_path)
    store = tmp_path / "rubric.jsonl"
    with FakeJudgeServer(RubricServer()) as server:
        score_rubric(b, _records(b), rubrics, _judge(server.url), store, script=script)
    # now every request gets (0, 0): an item judged again would score 0
    with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(0, 0)), 0.0)) as server:
        run = score_rubric(b, _records(b), rubrics, _judge(server.url), store, script=script)
        asked = sorted({int(p["messages"][1]["content"].split("about question ")[1].split(" ")[0])
                        for _, p, _ in server.requests})
    assert asked == [3, 4, 5, 6] and len(server.requests) == 20  # the failed ones, 5 raters each
    assert run.status[:8] == ["judged"] * 2 + ["wrong_answer"] + ["judged"] * 5
    assert run.score[:8] == [1.0, pytest.approx(5 / 9), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert (run.judged_now, run.resumed) == (4, 3)
    # a changed reasoning is judged again, only that item
    records = _records(b)
    records[b.keys[0]]["think"] = "GOOD reasoning about question 0, said otherwise"
    with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(0, 1)), 0.0)) as server:
        run = score_rubric(b, records, rubrics, _judge(server.url), store, script=script)
    assert len(server.requests) == 5 and run.score[0] == pytest.approx(1 / 3) and run.score[1] == pytest.approx(5 / 9)
    # another judge model: everything judged again
    with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(0, 1)), 0.0)) as server:
        run = score_rubric(b, records, rubrics, _judge(server.url, model="another-judge"), store, script=script)
    assert len(server.requests) == 7 * 5 and run.resumed == 0


def test_a_changed_script_judges_every_item_again(tmp_path):
    """The stored judgements belong to the script's texts: another system message, or another prompt function
    (even one giving the same prompts), judges every item again; the same text elsewhere judges nothing."""
    b, path = _bench(tmp_path)
    rubrics = load_rubrics(path, b, "x")
    store = tmp_path / "rubric.jsonl"
    script = _script(tmp_path)

    def rerun(script) -> tuple[int, int]:
        with FakeJudgeServer(lambda p: (200, completion_body(rubric_reply(1, 2)), 0.0)) as server:
            run = score_rubric(b, _records(b, {0: "GOOD", 1: "GOOD"}), rubrics, _judge(server.url), store,
                               script=script)
        return len(server.requests), run.resumed

    assert rerun(script) == (10, 0)
    assert rerun(script) == (0, 2)
    copy = tmp_path / "copy"
    copy.mkdir()
    assert rerun(_script(copy)) == (0, 2)  # the same texts in another place
    same_prompts = RUBRIC_SCRIPT.format(system=RUBRIC_SYSTEM).replace(
        "    points = ", "    unused = len(rubric)\n    points = ")
    changed = load_rubric_script(make_rubric_script(tmp_path / "changed.py", text=same_prompts), "x")
    item = b.items[0]
    assert changed.system == script.system
    assert (render_prompt(changed, item["question"], item["answer"], rubrics["0000"], "r", "a")
            == render_prompt(script, item["question"], item["answer"], rubrics["0000"], "r", "a"))
    assert rerun(changed) == (10, 0)
    assert rerun(changed) == (0, 2)
    assert rerun(_script(tmp_path, system="Another judge's instructions.")) == (10, 0)
