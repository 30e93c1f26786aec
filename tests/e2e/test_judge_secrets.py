"""The judge's API key (from the environment) never reaches the run directory, the logs or the console."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

from tests.reward_testing import FakeJudgeServer, completion_body, default_reply

SECRET = "secret-123"


def test_api_key_is_used_but_never_written(toy_files, tmp_path):
    counter = itertools.count()

    def behave(prompt):
        # every third request fails, so that failure warnings are logged too
        n = next(counter)
        if n % 3 == 2:
            return 500, '{"error": "try again"}', 0.0
        return 200, completion_body(default_reply(prompt)), 0.0

    run = tmp_path / "run"
    env = {**os.environ, "AUDIOTHINK_JUDGE_KEY": SECRET}
    with FakeJudgeServer(behave) as server:
        out = subprocess.run(
            [sys.executable, "-m", "audiothink.train", "reward=full", "judge=openai",
             f"judge.base_url={server.url}", "judge.timeout_s=10", "judge.retries=0",
             "trainer.max_steps=1", "trainer.num_generations=4", "trainer.per_device_train_batch_size=16",
             "trainer.logging_steps=1", "eval.num_samples=0", "data.generate_toy=false",
             f"data.train={toy_files['train']}", "data.eval=null", f"hydra.run.dir={run}",
             "hydra.verbose=true"],  # DEBUG logs of every library too
            capture_output=True, text=True, timeout=300, env=env,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    # the key was really there and used
    assert server.requests and all(auth == f"Bearer {SECRET}" for _, _, auth in server.requests)
    assert "without a score" in out.stdout + out.stderr  # failures were logged
    # ... and written nowhere
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.jsonl", "completions.jsonl", "summary.json"} <= names
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert "AUDIOTHINK_JUDGE_KEY" in (run / "config.yaml").read_text()  # the variable's name only
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks
    assert SECRET not in out.stdout and SECRET not in out.stderr
