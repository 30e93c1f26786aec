"""Shared helpers for the exploration scripts (notes, not project code)."""
import numpy as np
from audiothink.data import render_prompt
from audiothink.toy.data import toy_items
from audiothink.prompts import training_prompt as default_prompt
from audiothink.toy.warmstart import as_sample

PROMPT = default_prompt()


def items(n, split="eval", seed=0):
    return list(toy_items(split, n, seed))


def messages(item):
    content = [{"type": "audio"}] * len(item.clips) + [{"type": "text", "text": render_prompt(as_sample(item), PROMPT)}]
    return [{"role": "user", "content": content}]


def pick(n_one=1, n_four=1, pool=40):
    its = items(pool)
    one = [i for i in its if len(i.clips) == 1][:n_one]
    four = [i for i in its if len(i.clips) == 4][:n_four]
    return one, four
