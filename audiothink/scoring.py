"""When an answer is correct: the official MMAU / MMAR scoring rule, reproduced exactly (both benchmarks use the
same rule), and :func:`is_correct`, the one test training rewards, held-out scoring and evaluation share.

A prediction is scored on its words, not its characters:

* ``tokenize(text)`` is the *set* of ``\\b\\w+\\b`` matches in ``text.lower()`` (Python ``re``, Unicode
  word characters, so "twenty-one" is {"twenty", "one"} and "don't" is {"don", "t"});
* with P = tokenize(prediction) and A = tokenize(answer), an empty P is wrong;
* INC is the union, over the choices whose word set differs from A, of their words that are not in A;
* the prediction is correct iff A ⊆ P and P ∩ INC = ∅.

Consequences that are part of the official numbers and are kept on purpose: word order is ignored (a
choice with the same words as the answer in another order also scores), naming two options is wrong,
a bare option letter is wrong unless the answer itself is that word, extra words are fine as long as
they belong to no other choice. The score is the micro average over all items.

What is scored is the extracted answer text (:func:`audiothink.formats.extract_answer`): the first
``<answer>`` block, or the raw output when there is none; never the think block.

>>> string_match("cello", "(B) cello", ["violin", "cello"])
True
>>> string_match("cello", "B", ["violin", "cello"])
False
>>> string_match("cello", "cello, not violin", ["violin", "cello"])
False
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from audiothink.choices import match_choice
from audiothink.formats import Parsed, extract_answer, parse

__all__ = ["tokenize", "string_match", "format_line"]

_WORD = re.compile(r"\b\w+\b")


def tokenize(text: str | None) -> set[str]:
    """The set of lower-cased words of ``text`` (``None`` has none)."""
    if not text:
        return set()
    return set(_WORD.findall(str(text).lower()))


def string_match(answer: str, prediction: str | None, choices: Iterable[str]) -> bool:
    """Whether ``prediction`` names ``answer`` under the official rule (see the module docstring)."""
    predicted = tokenize(prediction)
    if not predicted:
        return False
    wanted = tokenize(answer)
    wrong_words: set[str] = set()
    for choice in choices:
        words = tokenize(choice)
        if words != wanted:
            wrong_words |= words - wanted
    return wanted <= predicted and not (predicted & wrong_words)


def format_line(name: str, correct: int, n: int) -> str:
    """``name : 12.34% over N samples``, the line format of the official scripts' breakdowns."""
    accuracy = 100.0 * correct / n if n else 0.0
    return f"{name} : {accuracy:.2f}% over {n} samples"


def micro_accuracy(flags: Sequence[bool]) -> float:
    """Share of True over all items (0.0 for none)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else 0.0


def is_correct(completion: Any, answer: str, choices: Sequence[str], *, letters: bool = False) -> bool | None:
    """Whether ``completion`` answers ``answer`` (one of ``choices``); None when the row cannot be scored.

    None when ``answer`` is not one of ``choices``: guessing would pay or punish the model for a data
    error. Default: the official MMAU/MMAR rule on the extracted answer. ``letters=True``: the first answer
    block names the gold option (letter or text, :func:`audiothink.choices.match_choice`). ``completion`` is
    the text (or conversational completion); with ``letters=True`` a :class:`Parsed` works too.

    >>> is_correct("<think>not violin</think><answer>cello</answer>", "cello", ["violin", "cello"])
    True
    >>> is_correct("<answer>B</answer>", "cello", ["violin", "cello"])
    False
    >>> is_correct("<answer>B</answer>", "cello", ["violin", "cello"], letters=True)
    True
    """
    try:
        options = list(choices)
        gold = options.index(answer)
    except (TypeError, ValueError):
        return None
    if letters:
        parsed = completion if isinstance(completion, Parsed) else parse(completion)
        return match_choice(parsed.answer, options) == gold
    if isinstance(completion, Parsed):
        # a Parsed lost the raw text, which the benchmarks' rule scores when there is no answer block
        raise TypeError("is_correct: pass the completion text (letters=False scores the raw output without an "
                        "answer block), not a Parsed")
    return string_match(answer, extract_answer(completion), [str(c) for c in options])
