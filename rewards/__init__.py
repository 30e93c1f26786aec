"""Built-in reward functions (audiothink.rewards): format, accuracy, adaptive_think, consistency,
think_quality, think_length, repetition.

What a reward is -- the contract `(completions, **columns) -> list[float | None]`, None for "no score",
`batch_wide`, `local` / `local_scores`, `reward_values`, `group_ids`, async rewards, naming and the
metric `rewards/<name>/mean` -- is documented in one place: the docstring of audiothink/reward_api.py.
The rewards here are plain callables written against it, like a user's.

Three of them on two completions (runnable; tests/rewards/test_rewards.py runs it):

>>> from audiothink.rewards import Accuracy, AdaptiveThink, Format
>>> completions = ["<think>low and bowed</think><answer>(B) cello</answer>", "<answer>violin</answer>"]
>>> columns = {"answer": ["cello", "cello"], "choices": [["violin", "cello"], ["violin", "cello"]]}
>>> Format()(completions, **columns)
[1.0, 1.0]
>>> Accuracy()(completions, **columns)
[1.0, 0.0]
>>> [round(r, 4) for r in AdaptiveThink()(completions, **columns)]
[0.6065, -1.3935]
"""

from .accuracy import Accuracy
from .adaptive_think import AdaptiveThink
from .consistency import Consistency
from .format import Format
from .repetition import Repetition
from .think_length import ThinkLength
from .think_quality import ThinkQuality

__all__ = ["Accuracy", "AdaptiveThink", "Consistency", "Format", "Repetition", "ThinkLength", "ThinkQuality"]
