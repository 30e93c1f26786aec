"""A judge that cannot answer is found at start-up (one probe per task), and one that stops answering during
training is warned about once, with counts (audiothink/judge/watch.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from audiothink.plumbing.errors import ConfigError
from audiothink.judge import OpenAIJudge, RuleJudge
from audiothink.judge.watch import FailureWindow, JudgeWatch, probe_judges
from audiothink.rewards import Consistency, ThinkQuality
from tests.reward_testing import FakeJudgeServer, closed_port_url, completion_body, default_reply

PROMPTS = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs/judge/prompts/v1.yaml"))


def _rewards(url, **kw):
    kw = {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.01, **kw}
    # as build_rewards makes them: each reward gets its own instance of the run's judge config
    rewards = [Consistency(OpenAIJudge(base_url=url, model="judge", prompts=PROMPTS, **kw)),
               ThinkQuality(OpenAIJudge(base_url=url, model="judge", prompts=PROMPTS, **kw))]
    for reward, name in zip(rewards, ("consistency", "think_quality")):
        reward.__name__ = name
    return rewards


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_judge_that_answers_passes_with_one_request_per_task(endpoint):
    with FakeJudgeServer() as server:
        probe_judges(_rewards(server.url, endpoint=endpoint))
        prompts = [p.get("prompt") or p["messages"][-1]["content"] for _, p, _ in server.requests]
    assert len(prompts) == 2  # one consistency question, one think_quality question, no retries
    assert "yes or no" in prompts[0] and "Rate the reasoning" in prompts[1]
    assert all("(B) two" in p for p in prompts)  # the probe item is rendered like a real one


def test_the_rule_judge_is_not_probed():
    rewards = [Consistency(RuleJudge()), ThinkQuality(RuleJudge())]
    probe_judges(rewards)  # nothing to reach; no exception, nothing asked
    assert all(r.judge.calls == 0 for r in rewards)


GARBLED = {
    # name: (server behaviour, what the one line says)
    "unparsable_text": (lambda p: (200, completion_body("I would say so"), 0.0), r"reply 'I would say so' to the "
                        r"'consistency' prompt does not parse \(expected one of yes, no"),
    "not_openai_json": (lambda p: (200, "<html>hello</html>", 0.0), "malformed response"),
    "wrong_path": (lambda p: (404, '{"error": "not found"}', 0.0), "HTTP 404"),
    "server_error": (lambda p: (500, "oops", 0.0), "HTTP 500"),
}


@pytest.mark.parametrize("fault", list(GARBLED))
def test_a_judge_that_answers_garbage_is_refused(fault):
    behave, said = GARBLED[fault]
    with FakeJudgeServer(behave) as server:
        with pytest.raises(ConfigError, match=said) as e:
            probe_judges(_rewards(server.url))
        assert len(server.requests) == 1  # the first task's probe, not retried
    assert f"judge.base_url={server.url}" in str(e.value) and "\n" not in str(e.value)


def test_the_probe_timeout_is_short():
    with FakeJudgeServer(lambda p: (200, completion_body(default_reply(p)), 1.5)) as server:
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"timeout after 0.3 s"):
            probe_judges(_rewards(server.url, timeout_s=0.3, retries=3))
        assert time.perf_counter() - start < 1.2  # one attempt, no retries


def test_opt_out_trains_on_with_a_warning(caplog):
    url = closed_port_url()
    with caplog.at_level(logging.WARNING, logger="audiothink.judge"):
        probe_judges(_rewards(url, on_probe_failure="warn"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per task
    assert all(f"judge.base_url={url}" in w and "ConnectError" in w and "training on" in w for w in warnings)


def test_a_bad_probe_setting_is_refused():
    with pytest.raises(ValueError, match="judge.on_probe_failure"):
        OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="judge", prompts=PROMPTS, on_probe_failure="ignore")


@pytest.mark.e2e
def test_nothing_listening_stops_the_run_before_the_model_loads(tmp_path):
    """The issue's example, as a user types it: one line, exit 2, seconds, no run folder."""
    url = closed_port_url()
    run = tmp_path / "run"
    start = time.perf_counter()
    # max_steps=1 and no held-out scoring: where the judge is not probed the run trains (and exits 0) quickly
    out = subprocess.run(
        [sys.executable, "-m", "audiothink.train", "reward=full", "judge=openai", f"judge.base_url={url}",
         "trainer.max_steps=1", "trainer.per_device_train_batch_size=16", "eval.num_samples=0", "log.plots=false",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300,
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert f"judge.base_url={url}" in errors[0] and "ConnectError" in errors[0]
    assert "judge.on_probe_failure=warn" in errors[0]
    logs = out.stdout + out.stderr
    assert "data:" not in logs and "model:" not in logs  # stopped before the data set and the model load
    assert not run.exists()
    assert elapsed < 90, elapsed


def test_failure_window_warns_once_with_counts():
    w = FailureWindow(max_share=0.5, steps=3)
    said = [w.add(step, failed, total) for step, (failed, total) in
            enumerate([(8, 8), (8, 8), (0, 8), (8, 8), (8, 8), (8, 8)], start=1)]
    # steps 1-3: 16 of 24 failed (67% > 50%): warned at step 3, and only then
    assert said[2] == ("judge: 16 of 24 judged samples (67%) got no score over steps 1-3, more than "
                       "judge.max_failure_share=0.5")
    assert [s is not None for s in said] == [False, False, True, False, False, False]


@pytest.mark.parametrize(("steps", "warned"), [
    ([(4, 8), (4, 8)], False),  # exactly the share: not more than it
    ([(5, 8), (4, 8)], True),
    ([(0, 0), (0, 0)], False),  # nothing judged (no think completions): nothing to say
    ([(8, 8)], False),  # the window is not full yet
])
def test_failure_window_share(steps, warned):
    w = FailureWindow(max_share=0.5, steps=2)
    assert any(w.add(i, f, t) is not None for i, (f, t) in enumerate(steps, start=1)) is warned


def test_watch_counts_the_judges_real_failures_and_warns_once(caplog):
    """Three steps of real judge calls, 3 of 4 samples failing each (HTTP 500): one warning, with the counts."""

    def behave(prompt):
        return (500, "oops", 0.0) if "BAD" in prompt else (200, completion_body(default_reply(prompt)), 0.0)

    items = [{"question": "how many beeps?", "choices": ["one", "two"], "think": t, "answer": "two"}
             for t in ("fine", "BAD 1", "BAD 2", "BAD 3")]
    with FakeJudgeServer(behave) as server:
        rewards = _rewards(server.url, retries=0, failure_window=3)
        watch = JudgeWatch(rewards)
        with caplog.at_level(logging.WARNING, logger="audiothink.judge"):
            for step in range(1, 6):
                for reward in rewards:  # consistency's and think_quality's judge, each 4 samples a step
                    asyncio.run(reward.judge.score(reward.prompt, items))
                watch.on_step_end(None, SimpleNamespace(global_step=step), None)
    warnings = [r.getMessage() for r in caplog.records if "max_failure_share" in r.getMessage()]
    assert len(warnings) == 1
    assert "18 of 24 judged samples (75%) got no score over steps 1-3" in warnings[0]
    assert f"judge.base_url={server.url}" in warnings[0]


def test_doctests():
    import doctest

    import audiothink.judge.watch

    result = doctest.testmod(audiothink.judge.watch)
    assert result.attempted > 0 and result.failed == 0


class _Loaded(Exception):
    """Raised in place of the data set load: the run got past the probe."""


@pytest.mark.parametrize("action", ["stop", "warn"])
def test_train_stops_at_the_probe_or_goes_on_to_load(action, tmp_path, monkeypatch, caplog):
    """The config key reaches the judge: `stop` ends train() before data and model; `warn` goes on to load."""
    from hydra import compose, initialize_config_dir

    from audiothink import train

    url = closed_port_url()
    with initialize_config_dir(config_dir=str(Path(__file__).parents[2] / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["reward=full", "judge=openai", f"judge.base_url={url}",
                                          f"judge.on_probe_failure={action}", f"output_dir={tmp_path / 'run'}"])

    def load(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr(train, "load_processor", load)  # the first load after the probe
    monkeypatch.setattr(train, "load_model_and_processor", load)
    with caplog.at_level(logging.WARNING, logger="audiothink.judge"):
        with pytest.raises(ConfigError if action == "stop" else _Loaded) as e:
            train.train(cfg)
    if action == "stop":
        assert f"judge.base_url={url}" in str(e.value) and "ConnectError" in str(e.value)
    else:
        assert sum("training on (judge.on_probe_failure=warn)" in r.getMessage() for r in caplog.records) == 2


def test_a_judge_model_no_reward_asks_is_refused(tmp_path, monkeypatch):
    """judge=openai with the default rewards (none asks a judge): refused before the data and the model, naming the
    rewards; with a judge reward the same judge goes on to its probe; the rule judge unused is fine."""
    from hydra import compose, initialize_config_dir

    from audiothink import train

    def load(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr(train, "load_processor", load)
    monkeypatch.setattr(train, "load_model_and_processor", load)
    url = closed_port_url()
    configs = str(Path(__file__).parents[2] / "configs")
    for overrides, expected in ((["judge=openai", f"judge.base_url={url}"], "none of the rewards"),
                                (["judge=hf", "judge.path=/models/judge"], "none of the rewards"),
                                (["reward=adaptive_consistency", "judge=openai", f"judge.base_url={url}"], "ConnectError"),
                                (["judge=rule"], None)):
        with initialize_config_dir(config_dir=configs, version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"output_dir={tmp_path / 'run'}"])
        if expected is None:
            with pytest.raises(_Loaded):
                train.train(cfg)
            continue
        with pytest.raises(ConfigError, match=expected) as e:
            train.train(cfg)
        if expected == "none of the rewards":
            assert "adaptive_think, format, accuracy" in str(e.value) and "reward=full" in str(e.value)
