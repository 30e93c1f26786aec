"""The reward API: what a reward is, and how the trainer calls it.

(Reference docstring: see below; the wrappers are unified in one place.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from trl.trainer.utils import is_async_callable

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink")


class _Named:
    """A function (or partial) under the reward's config name, so the metric is rewards/<key>/mean."""

    def __init__(self, name: str, fn):
        self.__name__ = name
        self.fn = fn
        self.batch_wide = getattr(fn, "batch_wide", False)

    def __call__(self, completions, **columns):
        return self.fn(completions, **columns)


class _NamedAsync(_Named):
    async def __call__(self, completions, **columns):
        return await self.fn(completions, **columns)


def named_reward(name: str, fn):
    """Give `fn` the name `name`: set on class instances, wrapped for functions and partials."""
    import functools
    import inspect

    if not isinstance(fn, functools.partial) and not inspect.isroutine(fn):
        fn.__name__ = name
        return fn
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return (_NamedAsync if inspect.iscoroutinefunction(inner) else _Named)(name, fn)


FORMULA_KEY, TOTAL_NAME = "formula", "total"


def build_rewards(reward_cfg: DictConfig) -> tuple[list, list[float]]:
    """Instantiate each named reward; its config key becomes its name (and metric rewards/<name>/mean).

    An optional ``formula`` string (see audiothink/formula.py) adds one more, batch-wide reward named
    ``total`` with weight 1, evaluated after all the others; unknown names in it are a ConfigError here,
    before any model or data is loaded.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    funcs, weights, formula = [], [], None
    for name, entry in reward_cfg.items():
        if name == FORMULA_KEY:
            formula = entry
            continue
        if name == TOTAL_NAME:
            raise ConfigError(f"reward.{name}: the name is reserved for the value of reward.formula")
        if not isinstance(entry, DictConfig) or "fn" not in entry or "weight" not in entry:
            raise ConfigError(f"reward.{name}: expected a mapping with 'fn' (a _target_) and 'weight'")
        try:
            fn = instantiate(entry.fn)
        except MissingMandatoryValue as e:  # e.g. judge=hf without judge.path
            raise ConfigError(f"reward.{name}: {str(e).splitlines()[0]} (set it on the command line)") from e
        except InstantiationException as e:
            # a bad argument (unknown field, a judge prompt asking for a missing field, ...): say where
            if isinstance(e.__cause__, (ValueError, TypeError)):
                raise ConfigError(f"reward.{name}: {e.__cause__}") from e
            if str(e).startswith("Error locating target"):  # a misspelt _target_ (train() finds it before this)
                raise ConfigError(f"reward.{name}: {str(e).splitlines()[0]}") from e
            raise
        if not callable(fn):
            raise ConfigError(f"reward.{name}: {entry.fn.get('_target_')} did not build a callable")
        funcs.append(named_reward(name, fn))
        weights.append(float(entry.weight))
    if not funcs:
        raise ConfigError("reward: no reward configured")
    if formula is not None:
        from audiothink.formula import Formula

        funcs.append(Formula(formula, known=[f.__name__ for f in funcs]))
        weights.append(1.0)
    return funcs, weights



def check_reward_values(name: str, values: Any, n: int) -> list[float | None]:
    """`values` as floats (None kept), or an error naming the reward: wrong length, NaN/inf, a non-number.

    TRL checks the length only; a NaN would silently read as "no score" and a string would fail inside
    torch without naming the reward. None is the one way to say "no score".
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray | torch.Tensor):
        raise TypeError(f"reward {name!r} returned {type(values).__name__}, expected a list of {n} numbers or None")
    if len(values) != n:
        raise ValueError(f"reward {name!r} returned {len(values)} values for a batch of {n}")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, (np.ndarray, torch.Tensor)) and v.ndim == 0:
            v = v.item()
        if not isinstance(v, numbers.Real):
            raise TypeError(
                f"reward {name!r} returned {type(v).__name__} {v!r:.40} at index {i}: expected a number or None"
            )
        if not math.isfinite(v):
            raise ValueError(f"reward {name!r} returned {v} at index {i}: return None for 'no score'")
        out.append(float(v))
    return out


class _Checked:
    """A per-sample reward with its output checked (see check_reward_values) before TRL sees it."""

    def __init__(self, func: Callable, name: str):
        self.func, self.__name__ = func, name

    def __call__(self, completions, **kwargs):
        return check_reward_values(self.__name__, self.func(completions=completions, **kwargs), len(completions))


class _CheckedAsync(_Checked):
    async def __call__(self, completions, **kwargs):
        values = await self.func(completions=completions, **kwargs)
        return check_reward_values(self.__name__, values, len(completions))


class _Deferred:
    """Stands in for a batch-wide reward during TRL's per-rank pass; the real one runs after the gather.

    A batch-wide reward may have a per-rank part, `local(completions, **columns)`: it runs here (so each
    rank does its own share, e.g. judge calls) and its gathered output reaches the reward as `local_scores`.
    """

    def __init__(self, name: str, func: Callable | None = None):
        self.__name__ = name
        self.local = getattr(func, "local", None)

    def __call__(self, completions, **kwargs):
        if self.local is None:
            return [None] * len(completions)
        return check_reward_values(self.__name__, self.local(completions=completions, **kwargs), len(completions))


class _DeferredAsync(_Deferred):
    # Async, so that TRL starts its event loop and runs the local part alongside the other async rewards.
    async def __call__(self, completions, **kwargs):
        if self.local is None:
            return [None] * len(completions)
        values = self.local(completions=completions, **kwargs)
        if inspect.isawaitable(values):
            values = await values
        return check_reward_values(self.__name__, values, len(completions))


def is_batch_wide(func: Callable) -> bool:
    return bool(getattr(func, "batch_wide", False))


def trl_reward(func: Any, index: int, batch_wide: dict[int, Callable]):
    """What TRL's per-rank pass calls for reward `index`: a placeholder, a checked wrapper, or `func` itself."""
    name = getattr(func, "__name__", type(func).__name__)
    if index in batch_wide:
        local = getattr(func, "local", None)
        is_async = is_async_callable(func) or (local is not None and is_async_callable(local))
        return (_DeferredAsync if is_async else _Deferred)(name, func)
    if isinstance(func, (str, torch.nn.Module)):  # reward models: TRL scores them itself
        return func
    return (_CheckedAsync if is_async_callable(func) else _Checked)(func, name)


def score_batch_wide(
    funcs: dict[int, Callable],
    names: Sequence[str],
    completions: list,
    columns: dict[str, list],
    extra_kwargs: dict[str, Any],
    *,
    reward_values: dict[str, list[float | None]] | None = None,
    run_async: Callable[[Any], Any] = asyncio.run,
) -> dict[int, list[float]]:
    """Run each batch-wide reward once on the gathered batch, in index order; validate its output.

    `reward_values` (name -> gathered values) holds the per-sample rewards; each batch-wide reward sees it
    (as the kwarg `reward_values`) with the batch-wide ones before it added, so a formula placed last
    sees them all. A reward with a `local` part gets that part's gathered output as `local_scores`.
    Async rewards are awaited with `run_async` (the trainer passes its event loop). NaN marks None.
    """
    values_so_far = dict(reward_values or {})
    out = {}
    for index in sorted(funcs):
        func, name = funcs[index], names[index]
        kwargs = dict(extra_kwargs)
        kwargs["reward_values"] = dict(values_so_far)
        if getattr(func, "local", None) is not None:
            kwargs["local_scores"] = values_so_far.get(name)
        result = func(completions=completions, **columns, **kwargs)
        if inspect.isawaitable(result):
            result = run_async(_awaited(result))
        checked = check_reward_values(name, result, len(completions))
        values_so_far[name] = checked
        out[index] = [float("nan") if v is None else v for v in checked]
    return out


async def _awaited(awaitable):
    return await awaitable
