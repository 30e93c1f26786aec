"""audiothink.choices: tolerant letter/text matching that refuses ambiguity."""

import doctest

import pytest

import audiothink.choices as choices_module
from audiothink.choices import match_choice, normalize

STRINGS = ["violin", "cello", "double bass", "flute"]

MATCHES = [
    # (prediction, choices, expected index)
    ("B", STRINGS, 1),
    ("(B)", STRINGS, 1),
    ("B.", STRINGS, 1),
    ("b)", STRINGS, 1),
    ("b", STRINGS, 1),
    ("**B**", STRINGS, 1),
    ("B. cello", STRINGS, 1),
    ("(B) cello", STRINGS, 1),
    ("(B) Cello.", STRINGS, 1),
    ("A. violin", STRINGS, 0),
    ("violin", STRINGS, 0),
    ("Violin.", STRINGS, 0),
    ("  VIOLIN ", STRINGS, 0),
    ("the answer is violin", STRINGS, 0),
    ("The answer is (A) violin.", STRINGS, 0),
    ("Answer: B", STRINGS, 1),
    ("answer: (b)", STRINGS, 1),
    ("Option D", STRINGS, 3),
    ("The correct answer is C", STRINGS, 2),
    ("It sounds like a double bass.", STRINGS, 2),
    ("double   bass", STRINGS, 2),
    ("I pick (C) because it is low", STRINGS, 2),
    # contradicting letter and text
    ("B. flute", STRINGS, None),
    ("(A) cello", STRINGS, None),
    ("B. trumpet", STRINGS, None),
    # several options named
    ("violin or cello", STRINGS, None),
    ("not the violin, the cello", STRINGS, None),
    # nothing named
    ("trumpet", STRINGS, None),
    ("", STRINGS, None),
    ("   ", STRINGS, None),
    (None, STRINGS, None),
    ("I don't know", STRINGS, None),
    # letter out of range
    ("E", STRINGS, None),
    ("(Z)", STRINGS, None),
    ("E. violin", STRINGS, None),
    ("C", ["yes", "no"], None),
    # whole words only
    ("none", ["one", "two"], None),
    ("twofold", ["one", "two"], None),
    ("one", ["one", "two"], 0),
    ("the second clip is louder", ["first", "second"], 1),
    ("cellos", STRINGS, None),
    # the longest option wins where it covers the shorter one
    ("clip one", ["one", "clip one"], 1),
    ("one", ["one", "clip one"], 0),
    ("clip one, not one", ["one", "clip one"], None),
    ("an electric guitar", ["a guitar", "an electric guitar"], 1),
    ("electric guitar", ["a guitar", "an electric guitar"], 1),
    ("a guitar", ["a guitar", "an electric guitar"], 0),
    ("it is a guitar", ["a guitar", "an electric guitar"], 0),
    ("dog barking", ["dog", "dog barking", "cat"], 1),
    # option text that starts like a letter
    ("a guitar", ["drum", "piano", "a guitar"], 2),
    # labelled options from the dataset
    ("B", ["(A) violin", "(B) cello"], 1),
    ("cello", ["(A) violin", "(B) cello"], 1),
    ("(B) cello", ["(A) violin", "(B) cello"], 1),
    # symbols are part of options
    ("C#", ["C", "C#", "D"], 1),
    ("C# major", ["C major", "C# major"], 1),
    ("C", ["C", "C#", "D"], None),  # the letter says D, the text says C
    ("A", ["A", "B", "C"], 0),
    ("-6 dB", ["+6 dB", "-6 dB"], 1),
    # numbers
    ("2", ["1", "2", "3"], 1),
    ("There are 3 speakers", ["1", "2", "3"], 2),
    # duplicate options are ambiguous
    ("cello", ["cello", "cello"], None),
    # unicode
    ("チェロ", ["バイオリン", "チェロ"], 1),
    ("Café", ["café", "bar"], 0),
    # garbage choices
    ("B", [], None),
]


@pytest.mark.parametrize("prediction, choices, expected", MATCHES)
def test_match_choice(prediction, choices, expected):
    assert match_choice(prediction, choices) == expected


@pytest.mark.parametrize(
    "prediction, choices",
    [
        (123, STRINGS),
        ("B", None),
        ("B", 42),
        ("B", [None, 3, object()]),
        ("x" * 1_000_000, STRINGS),
        ("a " * 200_000, ["a", "a a", "b"]),
        ("(((((((((", STRINGS),
        ("\x00", STRINGS),
    ],
)
def test_never_raises(prediction, choices):
    result = match_choice(prediction, choices)
    assert result is None or isinstance(result, int)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Violin. ", "violin"),
        ("(B)", "b"),
        ("Double\n\t bass!", "double bass"),
        ('"cello"', "cello"),
        ("C#", "c#"),
        ("+6 dB", "+6 db"),
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_docstring_examples():
    result = doctest.testmod(choices_module)
    assert result.attempted > 0 and result.failed == 0
