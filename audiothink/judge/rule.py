"""The rule judge: no model, deterministic, offline. The embedded default, so `reward=full` runs anywhere.

It knows the two built-in questions only, and answers them by reading text, not by understanding it:

* ``consistency`` -- is the conclusion of the reasoning the answer given? The conclusion is the option
  named in the last "answer is X" / "so X" / "therefore X" statement of the think block, or else the
  last option mentioned there at all (option text or ``(B)``-style letter). 1 when it is the option the
  answer block names, 0 when it is another one or when the reasoning names none (a reasoning without a
  conclusion does not conclude the answer). Without choices, the answer text must appear in the final
  sentence of the reasoning.
* ``think_quality`` -- a STAND-IN for a judge model's rating of the logic, built from surface features
  that correlate with usable reasoning, independent of correctness, in 0.1 steps (sum of):
  0.3 reaches a conclusion (names an option), 0.2 refers to the question (shares a content word with it),
  0.2 is not degenerate (at least half of its words are distinct), 0.2 has a sensible length
  (3 to 300 words), 0.1 commits (names one option only, or argues: "because", "so", "since", ...).
  It cannot tell sound logic from fluent nonsense; use ``judge=hf`` or ``judge=openai`` for that.

Its scores are never None: there is nothing that can fail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from audiothink.choices import match_choice, normalize
from audiothink.judge.base import Judge, Prompt

# "so the answer is B", "the answer: cello", "therefore clip two", "thus (A)" ... up to the sentence end.
_CONCLUSION = re.compile(
    r"(?:\b(?:final|correct)?\s*answer\s*(?:is|:|=|would be|must be)|\b(?:so|therefore|thus|hence)\b,?)"
    r"\s*(?P<claim>[^.\n;!?,]+)",
    re.IGNORECASE,
)
_CONNECTIVES = re.compile(r"\b(?:because|so|since|therefore|thus|hence|as|which means)\b")
_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    "a an the is are was were be of to in on at and or do does did you your it this that which what how "
    "many much there here i we they he she with for from by as than then".split()
)


class RuleJudge(Judge):
    """No model: reads the reasoning's stated conclusion (consistency) and scores surface features (quality).

    >>> import asyncio
    >>> judge = RuleJudge()
    >>> item = {"question": "how many beeps?", "choices": ["one", "two"], "think": "i count two beeps", "answer": "two"}
    >>> asyncio.run(judge.score("consistency", [item, {**item, "answer": "one"}]))
    [1.0, 0.0]
    >>> asyncio.run(judge.score("think_quality", [item, {**item, "think": "hmm"}]))
    [1.0, 0.2]
    """

    def __init__(self, prompts: Mapping[str, Any] | None = None):
        # Prompts are accepted (and ignored) so that every backend takes the same config.
        super().__init__(prompts)

    def check_task(self, task: str | Prompt, fields: Sequence[str]) -> None:
        name = task.name if isinstance(task, Prompt) else task
        if name not in self.BUILTIN:
            raise ValueError(
                f"the rule judge has no rule for {name!r} (only {list(self.BUILTIN)}): use judge=hf or judge=openai"
            )

    async def _score(self, task: str | Prompt, items: list[Mapping[str, Any]]) -> tuple[list[float | None], int]:
        name = task.name if isinstance(task, Prompt) else task
        if name == "consistency":
            return [consistency(i.get("think"), i.get("answer"), i.get("choices")) for i in items], 0
        if name == "think_quality":
            return [think_quality(i.get("think"), i.get("question"), i.get("choices")) for i in items], 0
        self.check_task(name, ())
        raise AssertionError("unreachable")


def stated_option(think: str | None, choices: Sequence[str] | None) -> int | None:
    """Index of the option the reasoning concludes with: its last stated answer, else its last mention.

    >>> stated_option("maybe one, but i count two beeps", ["one", "two"])
    1
    >>> stated_option("the answer is (A), not two", ["one", "two"])
    0
    >>> stated_option("no idea", ["one", "two"]) is None
    True
    """
    if not think or not choices:
        return None
    options = list(choices)
    for m in reversed(list(_CONCLUSION.finditer(think))):
        index = match_choice(m.group("claim"), options)
        if index is not None:
            return index
    return _last_mention(think, options)


def _last_mention(text: str, options: list[str]) -> int | None:
    """The option whose mention ends last; at an equal end the longer one ("clip one" over "one")."""
    s = " ".join(text.lower().split())
    best: tuple[int, int, int] | None = None  # (end, length, index)
    for i, option in enumerate(options):
        for m in _mention_spans(s, option, i):
            if best is None or (m[1], m[1] - m[0]) > best[:2]:
                best = (m[1], m[1] - m[0], i)
    return None if best is None else best[2]


def _mention_spans(s: str, option: str, index: int) -> list[tuple[int, int]]:
    """Spans of ``option`` (whole words) or of its letter in parentheses, ``(b)``, in lower-cased ``s``."""
    core = normalize(str(option))
    patterns = [re.escape(core)] if core else []
    if index < 26:
        patterns.append(re.escape(f"({chr(ord('a') + index)})"))
    return [m.span() for p in patterns for m in re.finditer(r"(?<!\w)" + p + r"(?!\w)", s)]


def consistency(think: Any, answer: Any, choices: Any) -> float:
    """1.0 when the reasoning's conclusion is the answer given, else 0.0 (see the module doc)."""
    if not isinstance(think, str) or not think.strip() or not isinstance(answer, str) or not answer.strip():
        return 0.0
    if choices:
        options = [str(c) for c in choices]
        given = match_choice(answer, options)
        concluded = stated_option(think, options)
        return float(given is not None and given == concluded)
    sentences = [s for s in re.split(r"[.\n!?;]+", normalize(think)) if s.strip()]
    last = sentences[-1] if sentences else ""
    target = normalize(answer)
    return float(bool(target) and re.search(r"(?<!\w)" + re.escape(target) + r"(?!\w)", last) is not None)


def think_quality(think: Any, question: Any, choices: Any) -> float:
    """The stand-in logic score in [0, 1], 0.1 steps (see the module doc for the features)."""
    if not isinstance(think, str) or not think.strip():
        return 0.0
    words = _WORD.findall(think.lower())
    options = [str(c) for c in choices] if choices else []
    named = {i for i in range(len(options)) if _mentions(think, options[i], i)}
    tenths = 0
    if stated_option(think, options) is not None or (not options and words):
        tenths += 3
    q_words = {w for w in _WORD.findall(str(question or "").lower()) if w not in _STOP and len(w) > 2}
    if q_words & set(words):
        tenths += 2
    if words and len(set(words)) >= 0.5 * len(words):
        tenths += 2
    if 3 <= len(words) <= 300:
        tenths += 2
    if len(named) == 1 or _CONNECTIVES.search(think.lower()):
        tenths += 1
    return tenths / 10


def _mentions(text: str, option: str, index: int) -> bool:
    return bool(_mention_spans(" ".join(text.lower().split()), option, index))
