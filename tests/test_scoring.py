"""The official MMAU/MMAR rule, case by case: every expected value below was worked out by hand from the
rule (tokens = set of \\b\\w+\\b in lower(); correct iff A ⊆ P and P ∩ INC = ∅; empty P is wrong)."""

from __future__ import annotations

import re

import pytest

from audiothink.scoring import format_line, string_match, tokenize

INSTRUMENTS = ["violin", "cello", "flute", "piano"]
GUITARS = ["acoustic guitar", "electric guitar", "bass guitar", "drums"]
ORDER = ["dog then cat", "cat then dog"]
TWENTIES = ["twenty-one", "twenty-two", "twelve"]
NUMBERS = ["one", "two", "three"]
LETTERS = ["A", "B", "C", "D"]
VOICES = ["man", "woman", "child"]

# (prediction, answer, choices, correct?, why)
CASES = [
    ("cello", "cello", INSTRUMENTS, True, "exact"),
    ("Cello", "cello", INSTRUMENTS, True, "case"),
    ("CELLO!", "cello", INSTRUMENTS, True, "case and punctuation"),
    ("(B) cello", "cello", INSTRUMENTS, True, "letter + text: 'b' is no other choice's word"),
    ("B", "cello", INSTRUMENTS, False, "a bare letter is not the answer's words"),
    ("(B)", "cello", INSTRUMENTS, False, "a bracketed letter neither"),
    ("", "cello", INSTRUMENTS, False, "empty"),
    ("   \n", "cello", INSTRUMENTS, False, "whitespace only: no tokens"),
    ("...", "cello", INSTRUMENTS, False, "punctuation only: no tokens"),
    (None, "cello", INSTRUMENTS, False, "no prediction at all"),
    ("\n\tcello\n", "cello", INSTRUMENTS, True, "surrounding whitespace"),
    ("The answer is cello.", "cello", INSTRUMENTS, True, "extra words that belong to no other choice"),
    ("cello or violin", "cello", INSTRUMENTS, False, "two choices named"),
    ("not violin, cello", "cello", INSTRUMENTS, False, "another choice named, even negated"),
    ("cellos", "cello", INSTRUMENTS, False, "plural is another token"),
    ("cello-like", "cello", INSTRUMENTS, True, "hyphen splits: {cello, like}"),
    ("violoncello", "cello", INSTRUMENTS, False, "no substring matching"),
    ("acoustic guitar", "acoustic guitar", GUITARS, True, "shared word, exact"),
    ("guitar", "acoustic guitar", GUITARS, False, "shared word only: answer words missing"),
    ("acoustic", "acoustic guitar", GUITARS, False, "half the answer"),
    ("Guitar (acoustic)", "acoustic guitar", GUITARS, True, "word order is ignored"),
    ("an acoustic guitar, not electric", "acoustic guitar", GUITARS, False, "a distinguishing word of another choice"),
    ("acoustic guitar and drums", "acoustic guitar", GUITARS, False, "two choices named"),
    ("cat then dog", "dog then cat", ORDER, True, "same word set as the answer: counted correct (kept, not fixed)"),
    ("dog", "dog then cat", ORDER, False, "part of the answer"),
    ("twenty one", "twenty-one", TWENTIES, True, "'twenty-one' is {twenty, one}"),
    ("twenty-one", "twenty-one", TWENTIES, True, "exact with hyphen"),
    ("one twenty", "twenty-one", TWENTIES, True, "order ignored"),
    ("21", "twenty-one", TWENTIES, False, "digits are other tokens"),
    ("twenty", "twenty-one", TWENTIES, False, "'one' missing"),
    ("twenty-two", "twenty-one", TWENTIES, False, "'two' is a wrong word, 'one' missing"),
    ("2", "two", NUMBERS, False, "digit for a number word"),
    ("two beeps", "two", NUMBERS, True, "extra word"),
    ("two or three", "two", NUMBERS, False, "two choices named"),
    ("B", "B", LETTERS, True, "the answer itself is a letter"),
    ("(B)", "B", LETTERS, True, "bracketed"),
    ("b.", "B", LETTERS, True, "lower case with a dot"),
    ("B, not A", "B", LETTERS, False, "another letter named"),
    ("I would say B", "B", LETTERS, True, "no other letter among the words"),
    ("It's a B", "B", LETTERS, False, "'a' is the word of choice A"),
    ("woman", "woman", VOICES, True, "'man' is not a substring match"),
    ("a woman's voice", "woman", VOICES, True, "apostrophe splits: {a, woman, s, voice}"),
    ("a woman and a man", "woman", VOICES, False, "two choices named"),
    ("man", "woman", VOICES, False, "another choice"),
    ("Café", "café", ["café", "cafe"], True, "Unicode letters are word characters; É lowers to é"),
    ("cafe", "café", ["café", "cafe"], False, "no accent folding"),
    ("北京", "北京", ["北京", "上海"], True, "CJK exact"),
    ("答案是北京", "北京", ["北京", "上海"], False, "CJK runs are one token: no word boundary inside"),
    ("snake_case", "snake case", ["snake_case", "snake case"], False, "underscore is a word character"),
    ("snake case", "snake case", ["snake_case", "snake case"], True, "two words"),
    ("maybe", "?", ["?", "yes", "no"], True, "an answer with no words: any prediction without other words"),
    ("", "?", ["?", "yes", "no"], False, "but never an empty prediction"),
    ("medium", "medium", ["low", "high"], True, "answer not among the choices: still scored by its words"),
]


def reference_rule(answer, prediction, choices) -> bool:
    """A literal, loop-by-loop reading of the rule, kept deliberately different from the library code."""

    def words(s):
        return set(re.findall(r"\b\w+\b", (s or "").lower()))

    p, a = words(prediction), words(answer)
    if len(p) == 0:
        return False
    inc = []
    for c in choices:
        wc = words(c)
        if wc == a:
            continue
        inc += [w for w in wc if w not in a]
    return all(w in p for w in a) and not any(w in inc for w in p)


@pytest.mark.parametrize("prediction,answer,choices,expected,why", CASES, ids=[c[4] for c in CASES])
def test_official_rule(prediction, answer, choices, expected, why):
    assert string_match(answer, prediction, choices) is expected, why
    assert reference_rule(answer, prediction, choices) is expected, why


def test_table_is_large_and_balanced():
    assert len(CASES) >= 30
    assert sum(c[3] for c in CASES) >= 10 and sum(not c[3] for c in CASES) >= 10


def test_tokenize():
    assert tokenize("Twenty-one, don't!") == {"twenty", "one", "don", "t"}
    assert tokenize("") == set() and tokenize(None) == set()
    assert tokenize("A a A") == {"a"}


def test_line_format():
    assert format_line("sound", 1234, 10000) == "sound : 12.34% over 10000 samples"
    assert format_line("Total", 2, 3) == "Total : 66.67% over 3 samples"
    assert format_line("empty", 0, 0) == "empty : 0.00% over 0 samples"


def test_the_answer_block_is_scored_not_the_think_block():
    from audiothink.formats import extract_answer

    out = "<think>it could be the violin or the flute</think><answer>cello</answer>"
    assert string_match("cello", extract_answer(out), INSTRUMENTS)
    assert not string_match("cello", out, INSTRUMENTS)  # the think text names other choices
    # no answer block: the raw output is scored
    assert string_match("cello", extract_answer("I hear a cello"), INSTRUMENTS)
