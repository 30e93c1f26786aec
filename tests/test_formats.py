"""audiothink.formats: the two well-formed shapes, and everything else is malformed without raising."""

import doctest

import pytest

import audiothink.formats as formats
from audiothink.formats import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    Parsed,
    completion_text,
    extract_answer,
    parse,
)

WELL_FORMED = [
    # (completion, mode, think, answer)
    ("<think>bowed strings</think><answer>B</answer>", "think", "bowed strings", "B"),
    ("<think>bowed</think>\n<answer>B</answer>", "think", "bowed", "B"),
    ("  \n<think>\n low register \n</think>\n\n<answer>\n(B) cello\n</answer>\n ", "think", "low register", "(B) cello"),
    ("<think>a\nb\nc</think> \t <answer>violin</answer>", "think", "a\nb\nc", "violin"),
    ("<answer>B</answer>", "no_think", None, "B"),
    ("\n\n<answer> cello </answer>\n", "no_think", None, "cello"),
    ("<answer>the answer is (B) cello</answer>", "no_think", None, "the answer is (B) cello"),
    ("<think>弦楽器 🎻</think><answer>チェロ</answer>", "think", "弦楽器 🎻", "チェロ"),
    ("<answer>a < b and c > d</answer>", "no_think", None, "a < b and c > d"),
]


@pytest.mark.parametrize("completion, mode, think, answer", WELL_FORMED)
def test_well_formed(completion, mode, think, answer):
    p = parse(completion)
    assert p.well_formed
    assert p.mode == mode
    assert p.thinks == (mode == "think")
    assert p.think == think
    assert p.answer == answer


MALFORMED = [
    # (completion, thinks, answer)
    ("", False, None),
    ("   \n ", False, None),
    (None, False, None),
    ("B", False, None),
    ("<answer>B</answer><answer>C</answer>", False, "B"),
    ("<think>x</think><answer>B</answer><answer>C</answer>", True, "B"),
    ("<think>unclosed<answer>B</answer>", False, "B"),
    ("<think>reasoning</think><answer>B", True, None),
    ("<answer>B", False, None),
    ("<answer>B</answer> because it is bowed", False, "B"),
    ("<think>x</think><answer>B</answer>.", True, "B"),
    ("Sure! <think>x</think><answer>B</answer>", False, "B"),
    ("I think <answer>B</answer>", False, "B"),
    ("<think>x</think> hmm <answer>B</answer>", True, "B"),
    ("<answer>B</answer><think>x</think>", False, "B"),
    ("<think><think>x</think></think><answer>B</answer>", False, "B"),
    ("<answer><answer>B</answer></answer>", False, "<answer>B"),
    ("<think>x<answer>B</answer></think><answer>B</answer>", False, "B"),
    ("<answer></answer>", False, ""),
    ("<answer>   </answer>", False, ""),
    ("<think>x</think><answer> </answer>", True, ""),
    ("<think></think><answer>B</answer>", False, "B"),
    ("<think>  \n </think><answer>B</answer>", False, "B"),
    ("<think>x</think>", True, None),
    ("</think><answer>B</answer>", False, "B"),
    ("<answer>B</answer></answer>", False, "B"),
    ("<Think>x</Think><answer>B</answer>", False, "B"),
    ("<think>x</think><think>y</think><answer>B</answer>", True, "B"),
    ("<answer>B</answer>\n<|im_end|>", False, "B"),
    ("\x00\x01<>></<answer", False, None),
    ("}{][<<<>>>" * 50, False, None),
]


@pytest.mark.parametrize("completion, thinks, answer", MALFORMED)
def test_malformed(completion, thinks, answer):
    p = parse(completion)
    assert not p.well_formed
    assert p.mode == "malformed"
    assert p.thinks == thinks
    assert p.answer == answer


@pytest.mark.parametrize(
    "completion, text",
    [
        ("plain", "plain"),
        (None, ""),
        ([{"role": "assistant", "content": "<answer>B</answer>"}], "<answer>B</answer>"),
        ({"role": "assistant", "content": "hi"}, "hi"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "<answer>"}, {"type": "text", "text": "B</answer>"}]}], "<answer>B</answer>"),
        ([{"role": "tool", "content": "noise"}, {"role": "assistant", "content": "x"}], "x"),
        ([{"content": "no role"}], "no role"),
        ([], ""),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant"}], ""),
        (42, "42"),
    ],
)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


def test_conversational_parse():
    p = parse([{"role": "assistant", "content": "<think>bowed</think><answer>B</answer>"}])
    assert p == Parsed(well_formed=True, thinks=True, think="bowed", answer="B")


class _Explodes:
    def __str__(self):
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "weird",
    [_Explodes(), [_Explodes()], {"content": _Explodes()}, b"<answer>B</answer>", object(), 3.5, [[["deep"]]]],
)
def test_never_raises(weird):
    assert isinstance(completion_text(weird), str)
    assert parse(weird).mode == "malformed"
    assert isinstance(extract_answer(weird), str)


def test_huge_input():
    big = "<think>" + "hmm " * 500_000 + "</think><answer>B</answer>"
    assert parse(big).mode == "think"
    assert parse("<answer>" * 200_000).mode == "malformed"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>B</answer>", "B"),
        ("<think>x</think><answer> cello </answer>", "cello"),
        ("<answer>B</answer><answer>C</answer>", "B"),
        ("The answer is B.", "The answer is B."),
        ("  B\n", "B"),
        ("<answer>B", "<answer>B"),
        ("", ""),
        (None, ""),
        ([{"role": "assistant", "content": "<answer>A</answer>"}], "A"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_tag_constants():
    assert (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE) == ("<think>", "</think>", "<answer>", "</answer>")


def test_parsed_is_frozen():
    with pytest.raises(AttributeError):
        parse("<answer>B</answer>").answer = "C"


def test_docstring_examples():
    result = doctest.testmod(formats)
    assert result.attempted > 0 and result.failed == 0
