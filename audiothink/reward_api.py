"""The reward API: what a reward is, and how the trainer calls it. This docstring is the reference.

**A reward** is a plain callable

    reward(completions, **columns) -> list[float | None]

``completions`` holds the batch's completions (strings; the reply as a whole, a forced-mode prefill
included). Every dataset column (``answer``, ``choices``, ``question``, ``id``, …) arrives as a keyword with
one entry per completion, together with what TRL adds (``prompts``, ``completion_ids``, ``trainer_state``,
``log_metric``: ``log_metric("my/metric", x)`` logs a scalar), so accept ``**columns``. Return one value per
completion: a finite number, or ``None`` for "no score" (that completion is left out of this reward's mean
and, if no optimised reward scores it, out of the step: never a made-up 0). A reward never raises on
malformed model output, it scores it (None is for what lies outside the completion -- a gold answer missing
from the choices, a judge that timed out -- never for the completion's own text: a sample without a score
leaves the step, so a None the model can provoke is an escape from its advantage, and GRPO finds it; the toy
logic judge's None for malformed chains did exactly that). An exception means the reward itself is broken and
stops the run.
The output is checked: a wrong length, NaN/inf or a non-number stops the step with an error naming the
reward (``reward 'x' returned nan at index 3: return None for 'no score'``).

**Names and weights.** One name everywhere: the config key under ``reward:`` is the reward's name, and its
metric is ``rewards/<name>/mean`` (and ``/std``). Each entry is ``{weight: w, fn: {_target_: ...}}``; ``w`` is its
coefficient in TRL's weighted sum (0: logged, not optimised). Outside a config, the name is the callable's
``__name__`` (a function's or a partial's function's name, a class's ``__name__`` attribute, else the class name).

**Batch-wide rewards** (class attribute ``batch_wide = True``) depend on the whole batch, e.g. the share
of think completions. The trainer calls them ONCE per step, on the main process, after TRL's gather:
``completions`` and every column then cover the batch of all ranks, in rank order; the values are
broadcast to every rank, so all ranks train on the same advantages (a judge that samples cannot split
them). Besides the columns they receive

- ``group_ids``: the prompt group of each completion (the G completions of one prompt share an id, and
  sit next to each other);
- ``reward_values``: name -> the gathered values (None kept) of the rewards computed before this one:
  every per-sample reward, then the batch-wide ones in the order below (a formula, placed last, reads
  them all: audiothink/formula.py);
- ``local_scores``: when the reward defines ``local(completions, **columns)``, that part's output. The
  ``local`` part runs on every rank during TRL's per-rank pass, on the rank's own completions (so judge
  calls are spread over the ranks, none judged twice), is checked like a reward, and its gathered values
  arrive here.

Order after the gather: the async batch-wide rewards first, awaited together (each sees the per-sample
values), then the sync ones in config order (each sees everything before it).

**Async.** A reward may be async (``async def`` function, or a class with ``async def __call__``; a
``local`` part too): TRL awaits the per-sample ones together on its event loop, alongside the others.

**Errors across ranks.** An exception in a reward (a per-sample one or a ``local`` part on any rank, a
batch-wide one on the main process) stops every rank at the same point of the step with that reward's
exception and message, instead of leaving the other ranks waiting in a collective.

**How the trainer calls them** (audiothink/trainer.py, ``_calculate_rewards``): each reward is wrapped once
in :class:`Reward` (by :func:`build_rewards` from the config, or by the trainer for a callable passed to it);
TRL's per-rank pass calls the wrappers and gathers the reward matrix; :func:`score_batch_wide` then runs the
batch-wide rewards on the main process and :func:`score_batch_wide_once` broadcasts their values.

Example, runnable as is (the trainer makes these calls; here by hand)::

    >>> def brevity(completions, **columns):          # per sample
    ...     return [1.0 if len(c) < 30 else 0.0 for c in completions]
    >>> class ThinkShare:                              # batch-wide: the share of thinking completions
    ...     batch_wide = True
    ...     def __call__(self, completions, group_ids, reward_values, **columns):
    ...         share = sum("<think>" in c for c in completions) / len(completions)
    ...         return [None if v is None else share for v in reward_values["brevity"]]
    >>> completions = ["<think>two beeps</think><answer>two</answer>", "<answer>one</answer>"]
    >>> rewards = [Reward(brevity), Reward(ThinkShare(), name="think_share")]
    >>> [r.__name__ for r in rewards], [r.batch_wide for r in rewards]
    (['brevity', 'think_share'], [False, True])
    >>> [r(completions) for r in rewards]              # TRL's per-rank pass: checked; batch-wide deferred
    [[0.0, 1.0], [None, None]]
    >>> # after the gather, on the main process (here brevity gave the second completion no score)
    >>> score_batch_wide({1: rewards[1]}, ["brevity", "think_share"], completions, {},
    ...                  {"group_ids": [0, 0]}, reward_values={"brevity": [0.0, None]})
    {1: [0.5, nan]}
    >>> Reward(lambda completions, **columns: [float("nan")] * len(completions), name="bad")(completions)
    Traceback (most recent call last):
    ...
    ValueError: reward 'bad' returned nan at index 0: return None for 'no score'
"""

from __future__ import annotations

import asyncio
import math
import numbers
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from trl.trainer.utils import get_callable_name, is_async_callable

from audiothink.plumbing.errors import ConfigError

FORMULA_KEY, TOTAL_NAME = "formula", "total"


# ----------------------------------------------------------------------------------------------------------
# the wrapper


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


def is_batch_wide(func: Callable) -> bool:
    return bool(getattr(func, "batch_wide", False))


class Reward:
    """A reward as TRL's per-rank pass calls it: under its name, its output checked, batch-wide ones deferred.

    `Reward(fn, name)` wraps the user's callable once (build_rewards and the trainer do it; a Reward passes
    through unchanged). Called as TRL calls a reward, it returns the checked values of `fn`; for a
    batch-wide `fn` it returns the checked values of `fn.local` if there is one, else ``[None] * n``
    (a placeholder until the gather: score_batch_wide). When `fn`, or a batch-wide one's `local`, is async,
    the wrapper's ``__call__`` is async too (TRL tells async rewards by their ``__call__``). The wrapped
    callable's attributes (``judge``, ``expression``, …) read through: ``Reward(f).judge is f.judge``.
    """

    def __new__(cls, fn: Callable | None = None, name: str | None = None):
        if cls is Reward and fn is not None and _per_rank_is_async(fn):
            cls = _AsyncReward
        return super().__new__(cls)

    def __init__(self, fn: Callable, name: str | None = None):
        if isinstance(fn, Reward):  # never wrapped twice
            fn, name = fn.fn, name or fn.__name__
        self.fn = fn
        self.__name__ = name or get_callable_name(fn)
        self.batch_wide = is_batch_wide(fn)
        self.local = getattr(fn, "local", None) if self.batch_wide else None
        # Where exceptions of the per-rank pass go instead of propagating (see collect_errors), or None.
        self.errors: list[RewardFailure] | None = None

    def __getattr__(self, attr: str):
        if attr in ("fn", "__setstate__") or attr.startswith("__"):  # not the wrapped one's dunders; no recursion
            raise AttributeError(attr)
        return getattr(self.fn, attr)

    def __repr__(self) -> str:
        return f"Reward({self.fn!r}, name={self.__name__!r})"

    def _per_rank(self, completions, kwargs):
        part = self.local if self.batch_wide else self.fn
        return [None] * len(completions) if part is None else part(completions=completions, **kwargs)

    def _failed(self, e: Exception, n: int) -> list[None]:
        if self.errors is None:
            raise e
        self.errors.append(RewardFailure(self.__name__, e))
        return [None] * n  # a placeholder, so that this rank reaches TRL's gather like the others

    def __call__(self, completions, **kwargs):
        try:
            return check_reward_values(self.__name__, self._per_rank(completions, kwargs), len(completions))
        except Exception as e:  # noqa: BLE001 - re-raised on every rank after the gather (raise_failures)
            return self._failed(e, len(completions))


class _AsyncReward(Reward):
    async def __call__(self, completions, **kwargs):
        try:
            values = self._per_rank(completions, kwargs)
            if asyncio.iscoroutine(values) or isinstance(values, asyncio.Future):
                values = await values
            return check_reward_values(self.__name__, values, len(completions))
        except Exception as e:  # noqa: BLE001 - as Reward.__call__
            return self._failed(e, len(completions))


def _per_rank_is_async(fn: Callable) -> bool:
    if is_batch_wide(fn):
        local = getattr(fn, "local", None)
        # async even when only __call__ is: TRL then starts its event loop, which score_batch_wide runs on
        return is_async_callable(fn) or (local is not None and is_async_callable(local))
    return is_async_callable(fn)


def as_reward(fn: Any, name: str | None = None) -> Any:
    """`fn` as TRL's pass should call it: a Reward (an existing one unchanged); reward models pass as they are."""
    if isinstance(fn, Reward) or isinstance(fn, (str, torch.nn.Module)):  # TRL scores reward models itself
        return fn
    return Reward(fn, name)


# ----------------------------------------------------------------------------------------------------------
# from the config


def build_rewards(reward_cfg: DictConfig) -> tuple[list[Reward], list[float]]:
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
        funcs.append(Reward(fn, name))
        weights.append(float(entry.weight))
    if not funcs:
        raise ConfigError("reward: no reward configured")
    if formula is not None:
        from audiothink.formula import Formula

        funcs.append(Reward(Formula(formula, known=[f.__name__ for f in funcs]), TOTAL_NAME))
        weights.append(1.0)
    return funcs, weights


# ----------------------------------------------------------------------------------------------------------
# after the gather


def score_batch_wide(
    funcs: Mapping[int, Callable],
    names: Sequence[str],
    completions: list,
    columns: dict[str, list],
    extra_kwargs: dict[str, Any],
    *,
    reward_values: dict[str, list[float | None]] | None = None,
    run_async: Callable[[Any], Any] = asyncio.run,
) -> dict[int, list[float]]:
    """Run each batch-wide reward (index -> reward) once on the gathered batch; validate its output.

    The async ones are awaited together (one ``run_async``: the trainer passes its event loop), each seeing
    `reward_values` (name -> gathered values: the per-sample rewards); then the sync ones run in index
    order, each seeing the values of every reward before it, so a formula placed last sees them all. A
    reward with a `local` part gets that part's gathered output as `local_scores`. Returns index ->
    values, NaN marking None (TRL's reward matrix). Exceptions propagate.
    """
    values_so_far = dict(reward_values or {})
    rewards = {i: f if isinstance(f, Reward) else Reward(f, names[i]) for i, f in funcs.items()}
    out: dict[int, list[float]] = {}

    def call(index: int):
        reward = rewards[index]
        kwargs = dict(extra_kwargs, reward_values=dict(values_so_far))
        if reward.local is not None:
            kwargs["local_scores"] = values_so_far.get(names[index])
        return reward.fn(completions=completions, **columns, **kwargs)

    def keep(index: int, result: Any) -> None:
        checked = check_reward_values(names[index], result, len(completions))
        values_so_far[names[index]] = checked
        out[index] = [float("nan") if v is None else v for v in checked]

    together = [i for i in sorted(rewards) if is_async_callable(rewards[i].fn)]
    if together:
        async def one(index: int):
            with _named_failure(names[index]):
                return await call(index)

        async def gathered():
            return await asyncio.gather(*(one(i) for i in together))

        for index, result in zip(together, run_async(gathered()), strict=True):
            with _named_failure(names[index]):
                keep(index, result)
    for index in sorted(set(rewards) - set(together)):
        with _named_failure(names[index]):
            result = call(index)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):  # e.g. a lambda returning one
                result = run_async(_awaited(result))
            keep(index, result)
    return dict(sorted(out.items()))


@contextmanager
def _named_failure(name: str):
    """An exception leaving the block carries the reward's name (``reward_name``), for the other ranks' copy."""
    try:
        yield
    except Exception as e:
        if getattr(e, "reward_name", None) is None:
            try:
                e.reward_name = name
            except AttributeError:  # an exception type with __slots__
                pass
        raise


async def _awaited(awaitable):
    return await awaitable


# ----------------------------------------------------------------------------------------------------------
# across ranks: computed once, errors everywhere


class RewardFailure:
    """An exception a reward raised, in a form that crosses processes (``gather_object`` pickles it).

    `error` is the exception itself on the rank that raised it; elsewhere it is the unpickled copy, or a
    RuntimeError with the same text when the exception does not survive pickling.
    """

    def __init__(self, name: str, error: BaseException, rank: int | None = None):
        self.name, self.error, self.rank = name, error, rank
        self.text = f"{type(error).__name__}: {error}"
        try:
            self._pickled: bytes | None = pickle.dumps(error)
            pickle.loads(self._pickled)  # an exception with a custom __init__ may pickle but not load
        except Exception:  # noqa: BLE001 - then the message travels alone
            self._pickled = None

    def __getstate__(self):
        return {"name": self.name, "rank": self.rank, "text": self.text, "_pickled": self._pickled}

    def __setstate__(self, state):
        self.__dict__.update(state)
        error = pickle.loads(self._pickled) if self._pickled is not None else None
        self.error = error if error is not None else RuntimeError(f"reward {self.name!r} failed: {self.text}")

    def raise_here(self, rank: int) -> None:
        error = self.error
        if self.rank is not None and self.rank != rank and hasattr(error, "add_note"):
            error.add_note(f"(raised by reward {self.name!r} on rank {self.rank}; this rank stops with it)")
        raise error


@contextmanager
def collect_errors(rewards: Sequence[Any]) -> Iterator[list[RewardFailure]]:
    """Within the block, an exception in a Reward of `rewards` is recorded (the reward returns None) instead of
    raised: every rank then reaches TRL's gather, and raise_failures stops them all together."""
    wrapped = [r for r in rewards if isinstance(r, Reward)]
    failures: list[RewardFailure] = []
    for r in wrapped:
        r.errors = failures
    try:
        yield failures
    finally:
        for r in wrapped:
            r.errors = None


def raise_failures(gathered: Sequence[RewardFailure | None], rank: int, own: RewardFailure | None = None) -> None:
    """`gathered` holds each rank's first failure (or None), in rank order: raise the lowest rank's, if any, on
    this rank (`rank`); on the rank that raised it, `own` (this rank's failure) gives the exception itself."""
    index, first = next(((i, f) for i, f in enumerate(gathered) if f is not None), (None, None))
    if first is None:
        return
    if index == rank and own is not None:
        raise own.error
    first.rank = index
    first.raise_here(rank)


def score_batch_wide_once(score: Callable[[], dict[int, list[float]]], *, rank: int, num_processes: int):
    """``score()`` run on the main process only, its result broadcast to every rank; an exception in it is
    raised on every rank (the main process: the exception itself; the others: a copy, see RewardFailure)."""
    if num_processes == 1:
        return score()
    from accelerate.utils import broadcast_object_list

    payload: list[Any] = [None]
    raised: Exception | None = None
    if rank == 0:
        try:
            payload = [score()]
        except Exception as e:  # noqa: BLE001 - raised on every rank below
            raised = e
            payload = [RewardFailure(getattr(e, "reward_name", None) or "batch-wide", e, rank=0)]
    payload = broadcast_object_list(payload, from_process=0)
    if raised is not None:
        raise raised  # the main process: the exception itself, with its traceback
    if isinstance(payload[0], RewardFailure):
        payload[0].raise_here(rank)
    return payload[0]


__all__ = [
    "Reward", "as_reward", "build_rewards", "check_reward_values", "collect_errors", "is_batch_wide",
    "raise_failures", "score_batch_wide", "score_batch_wide_once", "RewardFailure", "FORMULA_KEY", "TOTAL_NAME",
    "drop_rows_without_optimised_reward",
]


def drop_rows_without_optimised_reward(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> None:
    """In place on ``rewards_per_func`` (rows × rewards, NaN = None): a row whose every weighted reward is None
    gets None everywhere, so TRL leaves it out of the step.

    TRL drops a row (advantage 0, out of its group's baseline) only when *all* columns are None; a
    weight-0 column (logged, not optimised: e.g. the components of a formula) would otherwise keep the
    row in, and TRL's nansum would pay it a made-up 0.
    """
    weighted = (reward_weights != 0).to(rewards_per_func.device)
    if not weighted.any() or weighted.all():
        return
    nan = torch.isnan(rewards_per_func)
    drop = nan[:, weighted].all(dim=1) & ~nan.all(dim=1)
    if drop.any():
        rewards_per_func[drop] = float("nan")
