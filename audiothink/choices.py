"""Which multiple-choice option an answer names.

The model sees options as ``(A) violin``, ``(B) cello``, … and may answer with the letter, the
text, both, or a sentence around either. ``match_choice`` returns the index of the one option
named, or None when none is named or several different ones are.

>>> choices = ["violin", "cello", "double bass"]
>>> [match_choice(p, choices) for p in ["B", "(B) cello", "Cello.", "the answer is cello"]]
[1, 1, 1, 1]
>>> match_choice("B. violin", choices) is None  # the letter and the text disagree
True
>>> match_choice("violin or cello", choices) is None
True
"""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import accumulate
from collections.abc import Sequence
from string import ascii_lowercase

# Only punctuation that wraps or ends a phrase: "#", "+", "-", "%" can be part of an option
# ("C#", "+3 dB", "-6 dB", "50%"), so they are kept.
_END_PUNCT = frozenset(".,;:!?\"'`*()[]{}“”‘’«»。，：；！？、")

# "Answer: B", "The correct answer is (B)", "Option B" ...
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|option|choice)\b(?:\s+is\b)?\s*[:=\-]?\s*"
)
# A letter with an explicit delimiter, after normalize has dropped a leading "(":
# "b)", "b.", "b:", "b) violin". Whitespace is required before the text so "e.g. ..." is not a letter.
_LETTER = re.compile(r"^([a-z])[.):](?:\s+(.*))?$", re.DOTALL)
_PAREN_LETTER = re.compile(r"\(([a-z])\)")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def normalize(text: str) -> str:
    """Lowercase, collapse whitespace, drop wrapping punctuation at both ends.

    >>> normalize("  (B)  Double\\n bass. ")
    'b) double bass'
    """
    s = " ".join(str(text).lower().split())
    start, end = 0, len(s)
    while start < end and (s[start] in _END_PUNCT or s[start].isspace()):
        start += 1
    while end > start and (s[end - 1] in _END_PUNCT or s[end - 1].isspace()):
        end -= 1
    return s[start:end]


def match_choice(prediction: str | None, choices: Sequence[str]) -> int | None:
    """Index of the option ``prediction`` names, or None. Never raises.

    Accepted: a letter ("B", "(B)", "b)"), a lead-in ("Answer: B"), letter and text
    ("(B) cello", which must agree), the text alone in any case or inside a sentence (whole words
    only). When one named option lies inside a longer named one ("clip one" vs "one"), the longer
    wins where it covers the shorter.
    """
    try:
        return _match(prediction, choices)
    except Exception:
        return None


def _match(prediction: str | None, choices: Sequence[str]) -> int | None:
    if not isinstance(prediction, str):
        return None
    texts = [_option_text(c, i) for i, c in enumerate(choices)]
    if not texts:
        return None
    pred = normalize(prediction)
    if not pred:
        return None

    # "Answer: B" -> "b". The full text goes first in case an option itself reads that way.
    stripped = normalize(_LEAD_IN.sub("", pred, count=1)) or pred
    for candidate in (pred, stripped):
        if len(candidate) == 1 and candidate in ascii_lowercase:
            return _bare_letter(candidate, texts)
        exact = _exact(candidate, texts)
        if exact is not None:
            return exact
    pred = stripped

    lettered = _LETTER.match(pred)
    if lettered:
        index = _letter_index(lettered.group(1), len(texts))
        rest = normalize(lettered.group(2) or "")
        if index is None or not rest:
            return index
        # Trailing text must confirm the letter: "B. flute" when B is violin is not B.
        return index if rest == texts[index] or _contained(rest, texts) == index else None

    contained = _contained(pred, texts)
    if contained is not None:
        return contained

    # Last resort: a single "(B)" somewhere in a sentence.
    letters = {m.group(1) for m in _PAREN_LETTER.finditer(pred)}
    if len(letters) == 1:
        return _letter_index(letters.pop(), len(texts))
    return None


def _option_text(choice: object, index: int) -> str:
    """Normalized option text, without a "(A) " label if the dataset already carries one."""
    text = normalize(str(choice))
    m = _LETTER.match(text)
    if m and m.group(2) and m.group(1) == ascii_lowercase[index % 26]:
        return normalize(m.group(2))
    return text


def _letter_index(letter: str, n: int) -> int | None:
    index = ord(letter) - ord("a")
    return index if 0 <= index < n else None


def _bare_letter(letter: str, texts: list[str]) -> int | None:
    """A lone letter, which may also be an option's own text ("C" among notes C, C#, D)."""
    by_letter = _letter_index(letter, len(texts))
    by_text = _exact(letter, texts)
    if by_text is None:
        return by_letter
    # Letter and text must agree, unless the letter points at no option at all.
    return by_text if by_letter in (None, by_text) else None


def _exact(pred: str, texts: list[str]) -> int | None:
    hits = [i for i, t in enumerate(texts) if t == pred]
    return hits[0] if len(hits) == 1 else None


def _core(text: str) -> str:
    # "a guitar" and "an electric guitar" compete on "guitar" vs "electric guitar".
    core = _ARTICLE.sub("", text, count=1)
    return core or text


def _contained(pred: str, texts: list[str]) -> int | None:
    """The one option whose text occurs in ``pred`` as whole words, after dropping covered ones."""
    spans: dict[int, list[tuple[int, int]]] = {}
    cores = [_core(t) for t in texts]
    for i, core in enumerate(cores):
        if not core:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(core) + r"(?!\w)")
        found = [m.span() for m in pattern.finditer(pred)]
        if found:
            spans[i] = found

    winners = [i for i in spans if not _covered(i, spans, cores)]
    # Two options with the same text both survive, which is ambiguous too.
    return winners[0] if len(winners) == 1 else None


def _covered(i: int, spans: dict[int, list[tuple[int, int]]], cores: list[str]) -> bool:
    """Every occurrence of option ``i`` lies inside an occurrence of a longer named option."""
    longer = sorted(
        span for j, found in spans.items() if j != i and len(cores[j]) > len(cores[i]) for span in found
    )
    if not longer:
        return False
    # Sorted by start; reach[k] is the furthest end among the first k+1 spans, so a span (s, e)
    # is covered when some span starting at or before s reaches e. Linear-log, for huge outputs.
    starts = [a for a, _ in longer]
    reach = list(accumulate((b for _, b in longer), max))
    for s, e in spans[i]:
        k = bisect_right(starts, s)
        if k == 0 or reach[k - 1] < e:
            return False
    return True
