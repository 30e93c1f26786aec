"""Judges: models (or rules) that score a completion's reasoning for the judge-based rewards.

Four backends behind one interface, picked in config with ``judge=rule|toy_logic|hf|openai``:

* :class:`RuleJudge` (default) -- no model; reads the stated conclusion of the reasoning. Offline.
* :class:`ToyLogicJudge` -- the rule judge, whose think quality on the toy checks each step of the chain against
  the task's rule (``audiothink/judge/toy_logic.py``); free text keeps the rule judge's surface stand-in.
* :class:`HFJudge` -- a local causal LM via transformers, batched, greedy, on its own device if asked.
* :class:`OpenAIJudge` -- an OpenAI-compatible server; async, bounded concurrency, timeouts, retries.

Every judge is used the same way, from an async reward::

    scores = await judge.score("consistency", items, log_metric=log_metric)  # float or None per item

Prompts are versioned in ``configs/judge/prompts/`` (a :class:`Prompt` each: template plus the one
reply shape accepted). See ``audiothink/judge/base.py`` for the failure accounting, and
``audiothink/judge/watch.py`` for the start-up probe (a judge that cannot answer stops the run before
the model loads) and the warning when a judge keeps failing during training.
"""

from audiothink.judge.base import Judge, Prompt, prompts_from_config
from audiothink.judge.hf import HFJudge
from audiothink.judge.openai import OpenAIJudge
from audiothink.judge.rule import RuleJudge
from audiothink.judge.toy_logic import ToyLogicJudge

__all__ = ["HFJudge", "Judge", "OpenAIJudge", "Prompt", "RuleJudge", "ToyLogicJudge", "prompts_from_config"]
