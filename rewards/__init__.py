"""Built-in reward functions.

The reward contract: a reward is a plain callable

    reward(completions, **columns) -> list[float | None]

``completions`` holds the generated completions (plain strings, or conversational lists of
messages); every dataset column (``answer``, ``choices``, …) arrives as a keyword with one entry per
completion, along with whatever the trainer adds (``prompts``, ``trainer_state``, …), so accept
``**kwargs``. Return one score per completion; ``None`` means "no score": that reward is left out for
that completion instead of counting as 0. A reward never raises on malformed model
output: it scores it.

A reward whose value depends on the whole batch sets the class attribute ``batch_wide = True``.
The trainer then calls it once with the batch gathered from all ranks, so batch statistics (such
as the share of think completions) are global, not per rank. It also receives ``group_ids`` (the
prompt group of each completion) and ``reward_values`` (name -> values of the rewards computed before
it). An optional ``local`` method is its per-rank part: run before the gather, its gathered output
reaches ``__call__`` as ``local_scores`` (``think_quality`` judges there, so no rank judges twice).

A reward may be async (``async def __call__``, e.g. judge-based ones: ``consistency``,
``think_quality``); the trainer awaits it on its event loop, in parallel with the other async rewards.

The name a reward is logged under is its ``__name__``.

Example, runnable as is:

>>> from audiothink.rewards import Accuracy, AdaptiveThink, Format
>>> completions = ["<think>low and bowed</think><answer>(B) cello</answer>", "<answer>violin</answer>"]
>>> columns = {"answer": ["cello", "cello"], "choices": [["violin", "cello"], ["violin", "cello"]]}
>>> Format()(completions, **columns)
[1.0, 1.0]
>>> Accuracy()(completions, **columns)
[1.0, 0.0]
>>> [round(r, 4) for r in AdaptiveThink()(completions, **columns)]
[0.6065, -1.3935]
>>> def brevity(completions, **kwargs):  # a custom reward is just a function
...     return [1.0 if len(c) < 40 else 0.0 for c in completions]
>>> brevity(completions)
[0.0, 1.0]
"""

from .accuracy import Accuracy
from .adaptive_think import AdaptiveThink
from .consistency import Consistency
from .format import Format
from .repetition import Repetition
from .think_length import ThinkLength
from .think_quality import ThinkQuality

__all__ = ["Accuracy", "AdaptiveThink", "Consistency", "Format", "Repetition", "ThinkLength", "ThinkQuality"]
