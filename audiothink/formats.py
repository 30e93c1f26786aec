"""The two answer formats and how to read a completion.

A completion is well formed in exactly two shapes (whitespace is allowed at both ends and
between ``</think>`` and ``<answer>``):

* think mode: ``<think>…</think><answer>…</answer>``
* no-think mode: ``<answer>…</answer>``

There is no separate no-think tag: the mode is read from the presence of a well-formed think
block. Anything else is malformed. The check counts tags and looks at the whole completion, never
at a substring, so two answer blocks, text outside the tags, nesting or an unclosed tag all fail.

>>> p = parse("<think>bowed, low register</think>\\n<answer>(B) cello</answer>")
>>> p.mode, p.think, p.answer
('think', 'bowed, low register', '(B) cello')
>>> parse("<answer>B</answer>").mode
'no_think'
>>> parse("<answer>B</answer><answer>C</answer>")
Parsed(well_formed=False, thinks=False, think=None, answer='B')
>>> extract_answer("I think it is B")
'I think it is B'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

Mode = Literal["think", "no_think", "malformed"]

# force_mode -> the text put at the start of the assistant turn, after the prompt: the model then continues a
# think block (think) or an answer block (direct) instead of choosing. null: no prefill.
FORCE_PREFILLS = {"think": THINK_OPEN, "direct": ANSWER_OPEN}


def force_prefill(mode: str | None) -> str:
    """The prefill of a forced mode (``think`` -> ``<think>``, ``direct`` -> ``<answer>``); ``""`` for None.

    >>> force_prefill("direct"), force_prefill(None)
    ('<answer>', '')
    """
    if mode is None:
        return ""
    if mode not in FORCE_PREFILLS:
        raise ValueError(f"force_mode must be null, {' or '.join(FORCE_PREFILLS)}, got {mode!r}")
    return FORCE_PREFILLS[mode]


def completion_text(c: Any) -> str:
    """The text of a completion, whether a plain string or conversational.

    Conversational completions are lists of messages (``[{"role": "assistant", "content": ...}]``);
    content may itself be a list of parts (``[{"type": "text", "text": ...}]``). Never raises.

    >>> completion_text([{"role": "assistant", "content": "<answer>B</answer>"}])
    '<answer>B</answer>'
    >>> completion_text(None)
    ''
    """
    try:
        return _text(c)
    except Exception:  # a reward must score garbage as garbage, not crash the step
        return ""


def _text(c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        # A lone message, or a content part.
        if "content" in c:
            return _text(c["content"])
        if "text" in c:
            return _text(c["text"])
        return ""
    if isinstance(c, (list, tuple)):
        # Tool or user turns are not the model's answer; messages without a role are kept.
        return "".join(
            _text(m)
            for m in c
            if not (isinstance(m, Mapping) and m.get("role", "assistant") != "assistant")
        )
    return str(c)


@dataclass(frozen=True)
class Parsed:
    """What a completion says.

    ``thinks`` is read from the opening think block alone, so it is set even when the rest is
    malformed (the adaptive reward needs the mode of every completion). ``answer`` is the first
    closed answer block, also for malformed completions.
    """

    well_formed: bool
    thinks: bool
    think: str | None
    answer: str | None

    @property
    def mode(self) -> Mode:
        if not self.well_formed:
            return "malformed"
        return "think" if self.thinks else "no_think"


_EMPTY = Parsed(well_formed=False, thinks=False, think=None, answer=None)


def parse(completion: Any) -> Parsed:
    """Read a completion (string or conversational). Never raises."""
    try:
        return _parse(completion_text(completion))
    except Exception:
        return _EMPTY


def _parse(text: str) -> Parsed:
    s = text.strip()
    think = _opening_think(s)
    answer = _first_answer(s)
    counts = tuple(s.count(tag) for tag in _TAGS)

    if think is not None:
        # Counting guarantees no second block or stray tag hides in the think or answer text.
        rest = s[s.index(THINK_CLOSE) + len(THINK_CLOSE) :].lstrip()
        well_formed = counts == (1, 1, 1, 1) and _is_answer_only(rest)
    else:
        well_formed = counts == (0, 0, 1, 1) and _is_answer_only(s)

    return Parsed(well_formed=well_formed, thinks=think is not None, think=think, answer=answer)


def _opening_think(s: str) -> str | None:
    """Stripped content of a closed, non-empty think block that opens ``s``."""
    if not s.startswith(THINK_OPEN):
        return None
    end = s.find(THINK_CLOSE, len(THINK_OPEN))
    if end == -1:
        return None
    body = s[len(THINK_OPEN) : end]
    # A tag inside means nesting or an answer before the think closes: not a clean think block.
    if any(tag in body for tag in _TAGS):
        return None
    body = body.strip()
    return body or None


def _is_answer_only(s: str) -> bool:
    """``s`` is exactly one non-empty answer block (tag counts are checked by the caller)."""
    if not (s.startswith(ANSWER_OPEN) and s.endswith(ANSWER_CLOSE)):
        return False
    return bool(s[len(ANSWER_OPEN) : len(s) - len(ANSWER_CLOSE)].strip())


def _first_answer(s: str) -> str | None:
    start = s.find(ANSWER_OPEN)
    if start == -1:
        return None
    start += len(ANSWER_OPEN)
    end = s.find(ANSWER_CLOSE, start)
    if end == -1:
        return None
    return s[start:end].strip()


def extract_answer(text: Any) -> str:
    """The benchmark rule: the first answer block, stripped; the raw output stripped if none.

    >>> extract_answer("<think>hm</think><answer> cello </answer>")
    'cello'
    >>> extract_answer("  cello\\n")
    'cello'
    """
    raw = completion_text(text)
    answer = _first_answer(raw)
    return answer if answer is not None else raw.strip()
