"""The openai judge against a real HTTP server on 127.0.0.1: faults give None, are counted, retried as
configured, and a training step with the judge completes."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from audiothink.formula import Formula
from audiothink.judge import OpenAIJudge
from audiothink.rewards import AdaptiveThink, Consistency, Format, ThinkQuality
from tests.reward_testing import FakeJudgeServer, closed_port_url, completion_body, default_reply, toy_trainer

PROMPTS = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs/judge/prompts/v1.yaml"))
CHOICES = ["one", "two", "three"]


def _items(thinks):
    return [{"question": "how many beeps?", "choices": CHOICES, "think": t, "answer": "two"} for t in thinks]


def _judge(url, **kw):
    kw = {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.01, **kw}
    return OpenAIJudge(base_url=url, model="judge", prompts=PROMPTS, **kw)


def _score(judge, task, items):
    logged = []
    scores = asyncio.run(judge.score(task, items, log_metric=lambda k, v: logged.append((k, v))))
    return scores, dict(logged)


def test_scores_parse_and_identical_requests_go_once():
    with FakeJudgeServer() as server:
        judge = _judge(server.url)
        thinks = ["i count two beeps", "i count two beeps", "two, i think", "i count two beeps"]
        scores, logged = _score(judge, "consistency", _items(thinks))
        assert scores == [1.0] * 4
        assert len(server.requests) == 2 == judge.requests_sent  # 2 distinct prompts
        path, payload, auth = server.requests[0]
        assert path == "/v1/completions" and payload["temperature"] == 0.0 and payload["model"] == "judge"
        prompts = sorted(p["prompt"] for _, p, _ in server.requests)  # sent concurrently: any order
        assert "Reasoning:\ni count two beeps" in prompts[0] and "Reasoning:\ntwo, i think" in prompts[1]
        assert all("(B) two" in p for p in prompts)
        scores, _ = _score(judge, "think_quality", _items(["i count two beeps"]))
        assert scores == [0.7]
    assert logged["judge/failures"] == 0 and logged["judge/latency_s"] >= 0


def test_chat_endpoint_and_api_key_from_env(monkeypatch):
    monkeypatch.setenv("AUDIOTHINK_TEST_KEY", "k-987")
    with FakeJudgeServer() as server:
        judge = _judge(server.url, endpoint="chat", api_key_env="AUDIOTHINK_TEST_KEY")
        assert _score(judge, "consistency", _items(["two"]))[0] == [1.0]
        path, payload, auth = server.requests[0]
        assert path == "/v1/chat/completions" and payload["messages"][0]["role"] == "user"
        assert auth == "Bearer k-987"
        assert "k-987" not in repr(judge) and "k-987" not in str(vars(judge))
        monkeypatch.delenv("AUDIOTHINK_TEST_KEY")
        _score(judge, "consistency", _items(["one more"]))
        assert server.requests[-1][2] is None  # no key set: no header


def test_concurrency_is_bounded():
    with FakeJudgeServer(lambda p: (200, completion_body(default_reply(p)), 0.15)) as server:
        judge = _judge(server.url, max_concurrency=2)
        scores, _ = _score(judge, "think_quality", _items([f"think {i}" for i in range(6)]))
        assert scores == [0.7] * 6
        assert server.max_in_flight == 2


def test_ask_sends_every_text_with_its_parser_system_text_and_seed():
    """ask(): one request per text, identical texts too (several raters); the system text before the prompt on
    the completions endpoint; the seed on every request; a parser's ValueError is the failure's reason."""
    def parse_int(reply):
        if not reply.strip().isdigit():
            raise ValueError(f"{reply!r} is not a number")
        return int(reply)

    replies = {"a": "1", "b": "two"}
    with FakeJudgeServer(lambda p: (200, completion_body(replies[p[-1]]), 0.0)) as server:
        judge = _judge(server.url, seed=7)
        got = asyncio.run(judge.ask(["q a", "q a", "q b"], [parse_int, lambda r: r + "!", parse_int],
                                    system="SYS", retries=0))
    assert got == [(1, None), ("1!", None), (None, "unparsable reply: 'two' is not a number")]
    assert sorted(p["prompt"] for _, p, _ in server.requests) == ["SYS\n\nq a", "SYS\n\nq a", "SYS\n\nq b"]
    assert all(p["seed"] == 7 for _, p, _ in server.requests)
    assert (judge.failures, judge.samples) == (1, 3)


FAULTS = {
    # name: (server behaviour for an affected prompt, judge kwargs, attempts per affected prompt)
    # past the timeout; the timeout leaves good replies room on a loaded machine
    "slow": (lambda: (200, completion_body("0.7"), 1.5), {"timeout_s": 0.6, "retries": 1}, 2),
    "http_500": (lambda: (500, "oops", 0.0), {"retries": 2}, 3),
    "malformed_json": (lambda: (200, "{not json", 0.0), {"retries": 2}, 3),
    "unparsable_score": (lambda: (200, completion_body("seven out of ten"), 0.0), {"retries": 2}, 1),
    "unparsable_retried": (lambda: (200, completion_body("seven out of ten"), 0.0),
                           {"retries": 2, "retry_unparsable": True}, 3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_give_none_for_affected_samples_only(fault):
    bad, kwargs, attempts = FAULTS[fault]

    def behave(prompt):
        return bad() if "BAD" in prompt else (200, completion_body(default_reply(prompt)), 0.0)

    thinks = ["fine reasoning", "BAD reasoning", "other fine reasoning", "BAD reasoning", "BAD again"]
    with FakeJudgeServer(behave) as server:
        judge = _judge(server.url, **kwargs)
        start = time.perf_counter()
        scores, logged = _score(judge, "think_quality", _items(thinks))
        elapsed = time.perf_counter() - start
        assert scores == [0.7, None, 0.7, None, None]
        assert logged["judge/failures"] == 3 and judge.failures == 3
        # 2 good prompts once each; 2 distinct bad prompts, each tried `attempts` times
        per_prompt = {}
        for _, payload, _ in server.requests:
            per_prompt[payload["prompt"]] = per_prompt.get(payload["prompt"], 0) + 1
        bad_counts = sorted(n for p, n in per_prompt.items() if "BAD" in p)
        assert bad_counts == [attempts, attempts], per_prompt
        assert judge.requests_sent == 2 + 2 * attempts
    assert elapsed < 10


def test_connection_refused_is_retried_then_none():
    judge = _judge(closed_port_url(), retries=2, backoff_s=0.05)
    start = time.perf_counter()
    scores, logged = _score(judge, "consistency", _items(["a", "b", "a"]))
    elapsed = time.perf_counter() - start
    assert scores == [None, None, None]
    assert logged["judge/failures"] == 3
    assert judge.requests_sent == 2 * 3  # 2 distinct prompts x (1 + 2 retries)
    assert elapsed >= 0.05 + 0.1  # exponential backoff: 0.05 s, then 0.1 s


@pytest.mark.parametrize("url", ["not a url", "ftp://host/v1", "http:///v1"])
def test_bad_base_url_fails_at_start(url):
    with pytest.raises(ValueError, match="judge.base_url"):
        _judge(url)


def test_client_errors_are_not_retried():
    with FakeJudgeServer(lambda p: (401, '{"error": "bad key"}', 0.0)) as server:
        judge = _judge(server.url, retries=3)
        assert _score(judge, "consistency", _items(["x"]))[0] == [None]
        assert len(server.requests) == 1


def test_rate_limit_recovers_on_retry():
    calls = []

    def behave(prompt):
        calls.append(prompt)
        return (429, "slow down", 0.0) if len(calls) == 1 else (200, completion_body("0.4"), 0.0)

    with FakeJudgeServer(behave) as server:
        judge = _judge(server.url, retries=1)
        assert _score(judge, "think_quality", _items(["x"]))[0] == [0.4]
        assert len(server.requests) == 2 and judge.failures == 0


def _first_refused_then_ok(status: int, retry_after: str):
    calls = []

    def behave(prompt):
        calls.append(prompt)
        if len(calls) == 1:
            return status, "busy", 0.0, {"Retry-After": retry_after}
        return 200, completion_body("0.4"), 0.0

    return behave


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status):
    """The server asks for 1 s: the retry comes after it, not after the 0.01 s back-off."""
    with FakeJudgeServer(_first_refused_then_ok(status, "1")) as server:
        judge = _judge(server.url, retries=1, backoff_s=0.01, timeout_s=5.0)
        assert _score(judge, "think_quality", _items(["x"]))[0] == [0.4]
        assert len(server.requests) == 2 and judge.failures == 0
        gap = server.arrivals[1] - server.arrivals[0]
    assert 0.95 <= gap < 3.0, gap


@pytest.mark.parametrize("retry_after", ["3600", "date"])
def test_retry_after_is_capped_by_the_timeout(retry_after):
    """An hour (in seconds or as an HTTP date) is capped at timeout_s = 0.5 s: the retry comes then."""
    import email.utils

    value = email.utils.formatdate(time.time() + 3600, usegmt=True) if retry_after == "date" else retry_after
    with FakeJudgeServer(_first_refused_then_ok(429, value)) as server:
        judge = _judge(server.url, retries=1, backoff_s=0.01, timeout_s=0.5)
        start = time.perf_counter()
        assert _score(judge, "think_quality", _items(["x"]))[0] == [0.4]
        elapsed = time.perf_counter() - start
        gap = server.arrivals[1] - server.arrivals[0]
    assert 0.45 <= gap < 2.0 and elapsed < 3.0, (gap, elapsed)


def test_retry_after_values_and_wait_rule():
    from audiothink.judge.openai import retry_after_seconds

    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:05 GMT", now=now) == 5.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:05 -0000", now=now) == 5.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # past: no wait
    assert retry_after_seconds("-4") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad) is None
    judge = _judge("http://127.0.0.1:9/v1", backoff_s=0.5, timeout_s=30.0)
    assert [judge.retry_wait(k) for k in (1, 2, 3)] == [0.5, 1.0, 2.0]  # no header: exponential back-off
    assert judge.retry_wait(1, 3.0) == 3.0  # the server's wait, when longer
    assert judge.retry_wait(3, 0.2) == 2.0  # never shorter than the back-off
    assert judge.retry_wait(1, 3600.0) == 30.0  # capped at timeout_s


def _judged_trainer(toy_model_dir, toy_files, tmp_path, judge):
    rewards = [
        AdaptiveThink(),
        Format(),
        Consistency(judge, only_correct=False),
        ThinkQuality(judge),
        Formula("adaptive_think * (1 + 0.5 * consistency) + 0.5 * format + think_quality"),
    ]
    return toy_trainer(toy_model_dir, toy_files, tmp_path, rewards, weights=[0, 0, 0, 0, 1])


@pytest.mark.parametrize("fault", ["none", "slow", "http_500", "malformed_json", "unparsable_score", "refused"])
def test_training_step_completes_with_a_failing_judge(toy_model_dir, toy_files, tmp_path, fault):
    behaviours = {
        "none": lambda p: (200, completion_body(default_reply(p)), 0.0),
        "slow": lambda p: (200, completion_body(default_reply(p)), 1.6),
        "http_500": lambda p: (500, "oops", 0.0),
        "malformed_json": lambda p: (200, "<html>", 0.0),
        "unparsable_score": lambda p: (200, completion_body("I am not sure"), 0.0),
        "refused": None,
    }
    with FakeJudgeServer(behaviours[fault] or behaviours["none"]) as server:
        url = closed_port_url() if fault == "refused" else server.url
        judge = _judge(url, timeout_s=0.8, retries=1, backoff_s=0.01)
        trainer = _judged_trainer(toy_model_dir, toy_files, tmp_path, judge)
        trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert trainer.state.global_step == 1 and math.isfinite(log["loss"])
    # every judged sample failed (or none did); the count in the log is the judge's own count
    assert log["judge/failures"] == judge.failures
    judged = judge.calls
    assert judged == 2  # one consistency call, one think_quality call
    records = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    sample = [c for record in records for c in record["completions"]]
    thinks = [r for r in sample if r["text"].lstrip().startswith("<think>") and "</think>" in r["text"]]
    assert thinks  # the toy thinks in about a third of its completions; seed 0 gives some here
    if fault == "none":
        assert judge.failures == 0 and math.isfinite(log["rewards/total/mean"])
        assert all(r["rewards"]["think_quality"] == 0.7 for r in thinks)
    else:
        assert judge.failures > 0
        # a failed judgment is None, never a made-up score, and its row is left out (total None)
        assert all(r["rewards"]["think_quality"] is None and r["rewards"]["total"] is None for r in thinks)
        if fault == "refused":
            assert not server.requests
