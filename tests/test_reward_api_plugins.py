"""The reward-plugin API: the README's example, verbatim, trains a step; bad reward outputs name the reward."""

from __future__ import annotations

import inspect
import json
import math
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.reward_testing import FakeJudgeServer, toy_trainer
from tests.helpers import CONFIGS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin_blocks() -> tuple[str, str]:
    """The python and bash code blocks of README's "Write your own reward" section, verbatim."""
    text = README.read_text()
    section = text.split("### Write your own reward", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return python, bash


def test_readme_plugin_example_trains_a_step(toy_files, tmp_path, monkeypatch):
    from audiothink.train import train

    python, bash = readme_plugin_blocks()
    (tmp_path / "my_rewards.py").write_text(python)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    argv = shlex.split(bash.replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "audiothink.train"]
    with FakeJudgeServer() as server:
        # the README's command, pointed at the local judge server, on a 1-step toy run
        overrides = [f"judge.base_url={server.url}" if a.startswith("judge.base_url=") else a for a in argv[3:]]
        overrides += [
            "trainer.max_steps=1", "trainer.num_generations=4", "trainer.per_device_train_batch_size=16",
            "trainer.logging_steps=1", "trainer.report_to=[]", "eval.num_samples=0", "data.generate_toy=false",
            f"data.train={toy_files['train']}", "data.eval=null", f"output_dir={tmp_path / 'run'}",
        ]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        summary = train(cfg)
    assert summary["steps"] == 1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in metrics if "loss" in m)
    for name in ("brevity", "agreement", "listens"):
        assert f"rewards/{name}/mean" in step, name
    assert 0.0 <= step["rewards/agreement/mean"] <= 1.0
    # the async judge-based class was awaited and asked the judge (the fake server says "yes")
    listens = [p for _, p, _ in server.requests if "cite something heard" in p["prompt"]]
    assert listens and step["rewards/listens/mean"] == 1.0
    assert step["judge/failures"] == 0
    # the weights of the command line are the weights of the run
    assert cfg.reward.brevity.weight == 0.2 and cfg.reward.listens.weight == 0.5


# -- what a reward may return ------------------------------------------------------------------------------

BEHAVIOUR: dict[str, object] = {}  # reward name -> what it returns (a function of the batch size)


def _values(name, completions):
    make = BEHAVIOUR.get(name, lambda n: [0.5] * n)
    return make(len(completions))


def per_sample(completions, **kwargs):
    return _values("per_sample", completions)


class PerSampleAsync:
    __name__ = "per_sample_async"

    async def __call__(self, completions, **kwargs):
        return _values("per_sample_async", completions)


class Wide:
    __name__ = "wide"
    batch_wide = True

    def __call__(self, completions, group_ids, **kwargs):
        return _values("wide", completions)


class WideAsync:
    __name__ = "wide_async"
    batch_wide = True

    async def __call__(self, completions, group_ids, **kwargs):
        return _values("wide_async", completions)


NAMES = ["per_sample", "per_sample_async", "wide", "wide_async"]


@pytest.fixture(scope="module")
def trainer(toy_model_dir, toy_files, tmp_path_factory):
    trainer = toy_trainer(toy_model_dir, toy_files, tmp_path_factory.mktemp("plugins"),
                          [per_sample, PerSampleAsync(), Wide(), WideAsync()])
    trainer.model.train()
    return trainer


def _calculate(trainer, n=4):
    rows = [{"prompt": "q", "answer": "one", "choices": ["one", "two"], "id": f"r{i}"} for i in range(n)]
    completions = ["<answer>one</answer>"] * n
    return trainer._calculate_rewards(rows, ["q"] * n, completions, [[1]] * n)


def test_async_class_instances_are_awaited(trainer):
    assert not inspect.iscoroutinefunction(PerSampleAsync())  # the trap: the instance does not look async
    BEHAVIOUR.clear()
    BEHAVIOUR.update({"per_sample_async": lambda n: [0.25] * n, "wide_async": lambda n: [None, 0.75] * (n // 2)})
    out = _calculate(trainer)
    assert trainer.reward_func_names == NAMES
    assert out[:, 0].tolist() == [0.5] * 4 and out[:, 1].tolist() == [0.25] * 4 and out[:, 2].tolist() == [0.5] * 4
    assert [None if math.isnan(v) else v for v in out[:, 3].tolist()] == [None, 0.75, None, 0.75]


BAD = {
    "wrong length": (lambda n: [1.0] * (n - 1), ValueError, r"returned 3 values for a batch of 4"),
    "nan": (lambda n: [1.0, float("nan")] + [1.0] * (n - 2), ValueError, r"returned nan at index 1"),
    "inf": (lambda n: [float("inf")] * n, ValueError, r"returned inf at index 0"),
    "string": (lambda n: ["high"] * n, TypeError, r"returned str 'high' at index 0"),
    "not a list": (lambda n: 1.0, TypeError, r"returned float, expected a list of 4"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_output_names_the_reward(trainer, name, bad):
    make, error, message = BAD[bad]
    BEHAVIOUR.clear()
    BEHAVIOUR[name] = make
    with pytest.raises(error, match=rf"reward '{name}' {message}"):
        _calculate(trainer)
    BEHAVIOUR.clear()
