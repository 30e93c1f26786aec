"""audiothink/reward_api.py: its docstring example runs; one wrapper per reward; batch-wide order and async rules;
errors that cross processes. (Two real processes: tests/e2e/test_reward_api_ranks.py.)"""

from __future__ import annotations

import asyncio
import doctest
import pickle

import pytest

import audiothink.reward_api
from audiothink.reward_api import (Reward, RewardFailure, as_reward, build_rewards, collect_errors, raise_failures,
                                   score_batch_wide)


def test_the_reference_docstring_example_runs():
    result = doctest.testmod(audiothink.reward_api)
    assert result.attempted >= 5 and result.failed == 0


def _bounded(seconds=5.0):
    return lambda coroutine: asyncio.run(asyncio.wait_for(coroutine, seconds))


def test_async_batch_wide_rewards_are_awaited_together():
    """Each of two async batch-wide rewards waits for the other to have started: awaited one after the other,
    the first would wait forever (here: the bounded run_async times out)."""
    started = {"a": asyncio.Event(), "b": asyncio.Event()}  # bound to the loop that first waits on them

    def waiting_for(me, other):
        async def reward(completions, **kw):
            started[me].set()
            await started[other].wait()
            return [1.0] * len(completions)

        reward.batch_wide = True
        return reward

    funcs = {0: waiting_for("a", "b"), 1: waiting_for("b", "a")}
    out = score_batch_wide(funcs, ["a", "b"], ["x", "y"], {}, {}, run_async=_bounded())
    assert out == {0: [1.0, 1.0], 1: [1.0, 1.0]}


def test_batch_wide_order_async_together_then_sync_in_order():
    """The documented order: async ones first (they see the per-sample values), then sync ones in index order
    (each sees everything before it, so a formula placed last sees every reward)."""
    seen = {}

    def recording(name, value, is_async):
        if is_async:
            async def reward(completions, reward_values, **kw):
                seen[name] = sorted(reward_values)
                return [value] * len(completions)
        else:
            def reward(completions, reward_values, **kw):
                seen[name] = sorted(reward_values)
                return [value] * len(completions)
        reward.batch_wide = True
        return reward

    names = ["per_sample", "sync_first", "judge", "total"]
    funcs = {1: recording("sync_first", 1.0, False), 2: recording("judge", 2.0, True), 3: recording("total", 3.0, False)}
    out = score_batch_wide(funcs, names, ["x"], {}, {}, reward_values={"per_sample": [0.5]}, run_async=_bounded())
    assert out == {1: [1.0], 2: [2.0], 3: [3.0]}
    assert seen == {"judge": ["per_sample"], "sync_first": ["judge", "per_sample"],
                    "total": ["judge", "per_sample", "sync_first"]}


def test_one_wrapper_from_the_config_to_trl(toy_model_dir, toy_files, tmp_path):
    """build_rewards wraps each reward once, under its config key; the trainer hands TRL those very objects."""
    from omegaconf import OmegaConf

    from tests.reward_testing import toy_trainer

    cfg = OmegaConf.create({
        "speed": {"weight": 1.0, "fn": {"_target_": "audiothink.rewards.AdaptiveThink"}},
        "fmt": {"weight": 0.5, "fn": {"_target_": "audiothink.rewards.Format"}},
    })
    funcs, weights = build_rewards(cfg)
    assert [type(f).__name__ for f in funcs] == ["Reward", "Reward"] and weights == [1.0, 0.5]
    assert [f.__name__ for f in funcs] == ["speed", "fmt"] and [f.batch_wide for f in funcs] == [True, False]
    from audiothink.rewards import Format

    assert isinstance(funcs[1].fn, Format) and funcs[1].fn.__name__ == "format"  # the reward itself: not renamed
    assert as_reward(funcs[0]) is funcs[0]
    trainer = toy_trainer(toy_model_dir, toy_files, tmp_path, funcs, weights)
    assert trainer.reward_funcs == funcs and all(a is b for a, b in zip(trainer.reward_funcs, funcs))
    assert trainer.reward_func_names == ["speed", "fmt"]


def test_async_wrapper_for_async_rewards_and_local_parts():
    async def judged(completions, **kw):
        return [0.5] * len(completions)

    class WideWithAsyncLocal:
        batch_wide = True

        async def local(self, completions, **kw):
            return [0.25] * len(completions)

        def __call__(self, completions, local_scores, **kw):
            return local_scores

    sync, per_sample, wide = Reward(lambda completions, **kw: [1.0]), Reward(judged), Reward(WideWithAsyncLocal())
    assert not asyncio.iscoroutinefunction(type(sync).__call__)
    assert asyncio.iscoroutinefunction(type(per_sample).__call__) and asyncio.iscoroutinefunction(type(wide).__call__)
    assert asyncio.run(per_sample(["x"])) == [0.5] and asyncio.run(wide(["x", "y"])) == [0.25, 0.25]
    assert wide.__name__ == "WideWithAsyncLocal"


class _TwoArgs(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


def test_errors_are_held_inside_collect_errors_and_raised_outside():
    def broken(completions, **kw):
        raise KeyError("no such column: 'speaker'")

    reward = Reward(broken)
    with pytest.raises(KeyError):
        reward(["x"])
    with collect_errors([reward]) as failures:
        assert reward(["x", "y"]) == [None, None]  # this rank still reaches the gather
    assert [f.name for f in failures] == ["broken"] and isinstance(failures[0].error, KeyError)
    with pytest.raises(KeyError):
        reward(["x"])  # outside the block: raised again
    # on this rank (1): the exception itself; on rank 0: a copy, the same type and message, saying where it came from
    with pytest.raises(KeyError) as own:
        raise_failures([None, pickle.loads(pickle.dumps(failures[0]))], 1, failures[0])
    assert own.value is failures[0].error
    with pytest.raises(KeyError, match="speaker") as other:
        raise_failures([None, pickle.loads(pickle.dumps(failures[0]))], 0, None)
    assert "raised by reward 'broken' on rank 1" in "".join(other.value.__notes__)
    raise_failures([None, None], 0)  # nothing failed: nothing raised


def test_an_exception_that_does_not_unpickle_crosses_as_its_text():
    failure = pickle.loads(pickle.dumps(RewardFailure("judge", _TwoArgs(429, "quota"))))
    with pytest.raises(RuntimeError, match=r"reward 'judge' failed: _TwoArgs: 429: quota"):
        failure.raise_here(0)
