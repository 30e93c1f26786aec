"""rewards/accuracy.py: the official rule on the answer, as the benchmark scorer and the held-out summary score it;
unscoreable rows are None."""

import pytest

from audiothink.rewards import Accuracy
from audiothink.rewards.accuracy import is_correct
from tests.reward_testing import CHOICES, GOLD, NO_THINK_RIGHT, NO_THINK_WRONG, THINK_RIGHT, THINK_WRONG, columns


# ---------------------------------------------------------------- accuracy

# (completion, the benchmarks' rule (default), letters=True). The default scores what MMAU/MMAR score: the
# official string match on the extracted answer (first answer block, else the raw output), so letters earn 0.
ACCURACY_CASES = [
    (THINK_RIGHT, 1.0, 1.0),
    (NO_THINK_RIGHT, 1.0, 1.0),
    ("<answer>Cello.</answer>", 1.0, 1.0),
    ("<answer>the answer is cello</answer>", 1.0, 1.0),
    ([{"role": "assistant", "content": "<think>x</think><answer>cello</answer>"}], 1.0, 1.0),
    ("<answer>cello</answer><answer>violin</answer>", 1.0, 1.0),  # first answer block counts; format pays separately
    ("<answer>B</answer>", 0.0, 1.0),
    ("<answer>(B)</answer>", 0.0, 1.0),
    ("<answer>b)</answer>", 0.0, 1.0),
    ("<answer>Answer: B</answer>", 0.0, 1.0),
    ([{"role": "assistant", "content": "<answer>B</answer>"}], 0.0, 1.0),
    ("cello", 1.0, 0.0),  # no answer tag: the benchmarks score the raw output
    (THINK_WRONG, 0.0, 0.0),
    (NO_THINK_WRONG, 0.0, 0.0),
    ("B", 0.0, 0.0),
    ("<answer>B", 0.0, 0.0),
    ("<answer>trumpet</answer>", 0.0, 0.0),
    ("<answer>violin or cello</answer>", 0.0, 0.0),
    ("<answer>cello, not violin</answer>", 0.0, 0.0),  # names another option
    ("<answer>B. flute</answer>", 0.0, 0.0),
    ("<answer>Z</answer>", 0.0, 0.0),
    ("<answer></answer>", 0.0, 0.0),
    ("", 0.0, 0.0),
    (None, 0.0, 0.0),
]


@pytest.mark.parametrize("completion, official, letters", ACCURACY_CASES)
def test_accuracy(completion, official, letters):
    assert Accuracy()([completion], **columns(1)) == [official]
    assert Accuracy(letters=True)([completion], **columns(1)) == [letters]


def test_accuracy_agrees_with_the_benchmark_scorer_on_every_case():
    from audiothink.scoring import string_match
    from audiothink.formats import extract_answer

    for completion, official, _ in ACCURACY_CASES:
        assert float(string_match(GOLD, extract_answer(completion), CHOICES)) == official, completion


def test_choices_that_differ_only_in_case():
    """The exact gold text is correct under the benchmarks' rule; letter matching could not tell 'Two' from 'two'."""
    cols = {"answer": ["two"], "choices": [["one", "Two", "two", "four"]]}
    assert Accuracy()(["<answer>two</answer>"], **cols) == [1.0]
    assert Accuracy(letters=True)(["<answer>two</answer>"], **cols) == [0.0]


def test_the_held_out_summary_scores_like_the_benchmark():
    from audiothink.data import Sample
    from audiothink.inference import score

    samples = [Sample(id=str(i), audio=("x.wav",), question="q", choices=tuple(CHOICES), answer=GOLD, difficulty="easy")
               for i in range(3)]
    result = score(samples, ["<answer>B</answer>", "<answer>Answer: B</answer>", "<answer>cello</answer>"])
    assert result["overall"]["accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "gold, choices",
    [("viola", CHOICES), (None, CHOICES), ("B", CHOICES), ("cello", []), ("cello", None), ("cello", 7)],
)
def test_accuracy_unscoreable_row_is_none(gold, choices):
    assert Accuracy()([THINK_RIGHT], answer=[gold], choices=[choices]) == [None]
    assert is_correct(THINK_RIGHT, gold, choices) is None


def test_accuracy_mixed_rows():
    scores = Accuracy()(
        [THINK_RIGHT, THINK_RIGHT, NO_THINK_WRONG],
        answer=["cello", "viola", "cello"],
        choices=[CHOICES, CHOICES, CHOICES],
    )
    assert scores == [1.0, None, 0.0]


def test_columns_must_line_up():
    with pytest.raises(ValueError, match="line up"):
        Accuracy()([THINK_RIGHT, THINK_RIGHT], answer=[GOLD], choices=[CHOICES])
