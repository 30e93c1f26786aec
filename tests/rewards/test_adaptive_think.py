"""rewards/adaptive_think.py: the adaptive think reward by hand (λ, progress, the balance), on the gathered batch,
with malformed replies, missing golds, NaN and empty batches."""

import math
from types import SimpleNamespace

import pytest

from audiothink.rewards import AdaptiveThink
from audiothink.rewards.adaptive_think import adaptive_value
from tests.reward_testing import (CHOICES, FORMAT_CASES, NO_THINK_RIGHT, NO_THINK_WRONG, THINK_RIGHT, THINK_WRONG,
                                  columns)


# ---------------------------------------------------------------- adaptive think

E = math.exp


def state(step, total):
    return SimpleNamespace(global_step=step, max_steps=total)


@pytest.mark.parametrize(
    "thinks, correct, lam, progress, expected",
    [
        # the brief's numbers: an all-think batch at step 0
        (True, True, 1.0, 0.0, 0.3679),
        (True, False, 1.0, 0.0, -0.6321),
        # an all-no-think batch at step 0: no-think is the dominant mode now
        (False, True, 0.0, 0.0, 2 * 0.3679),
        (False, False, 0.0, 0.0, -0.3679 - 2 * 0.6321),
        # the rare mode is paid in full
        (True, True, 0.0, 0.0, 1.0),
        (True, False, 0.0, 0.0, 0.0),
        (False, True, 1.0, 0.0, 2.0),
        (False, False, 1.0, 0.0, -1.0),
        # p = 1: base values whatever λ
        (True, True, 0.7, 1.0, 1.0),
        (True, False, 0.7, 1.0, 0.0),
        (False, True, 0.7, 1.0, 2.0),
        (False, False, 0.7, 1.0, -1.0),
        # halfway through, λ = 0.5
        (True, True, 0.5, 0.5, E(-0.25)),
        (False, False, 0.5, 0.5, -E(-0.25) - 2 * (1 - E(-0.25))),
        # out-of-range inputs are clamped
        (True, True, 2.0, -1.0, E(-1)),
        (True, True, 0.5, 3.0, 1.0),
    ],
)
def test_adaptive_value(thinks, correct, lam, progress, expected):
    assert adaptive_value(thinks, correct, lam, progress) == pytest.approx(expected, abs=5e-5)


def test_adaptive_value_custom_base():
    base = (3.0, 0.5, 4.0, -2.0)
    g = E(-0.4)
    assert adaptive_value(True, True, 0.4, 0.0, base=base) == pytest.approx(g * 3.0)
    assert adaptive_value(True, False, 0.4, 0.0, base=base) == pytest.approx(0.5 - (1 - g))
    gn = E(-0.6)
    assert adaptive_value(False, True, 0.4, 0.0, base=base) == pytest.approx(gn * 4.0)
    assert adaptive_value(False, False, 0.4, 0.0, base=base) == pytest.approx(-2.0 * gn - 4.0 * (1 - gn))
    assert [adaptive_value(t, c, 0.4, 1.0, base=base) for t, c in [(1, 1), (1, 0), (0, 1), (0, 0)]] == list(base)


def test_adaptive_all_think_batch_at_start():
    reward = AdaptiveThink()
    scores = reward([THINK_RIGHT, THINK_WRONG], **columns(2), trainer_state=state(0, 100))
    assert [round(s, 4) for s in scores] == [0.3679, -0.6321]
    assert reward.last_think_share == 1.0


def test_adaptive_end_of_training_gives_base_values():
    completions = [THINK_RIGHT, THINK_WRONG, NO_THINK_RIGHT, NO_THINK_WRONG]
    scores = AdaptiveThink()(completions, **columns(4), trainer_state=state(100, 100))
    assert scores == pytest.approx([1.0, 0.0, 2.0, -1.0])


def test_adaptive_mixed_batch_by_hand():
    # 3 of 5 think (one of them malformed), p = 20 / 80 = 0.25.
    completions = [
        THINK_RIGHT,
        THINK_WRONG,
        "<think>low</think><answer>cello</answer> trailing",  # thinks, malformed, still correct
        NO_THINK_RIGHT,
        NO_THINK_WRONG,
    ]
    lam, rest = 3 / 5, 0.75
    g_think, g_no = E(-lam * rest), E(-(1 - lam) * rest)
    expected = [g_think, -(1 - g_think), g_think, 2 * g_no, -g_no - 2 * (1 - g_no)]
    reward = AdaptiveThink()
    assert reward(completions, **columns(5), trainer_state=state(20, 80)) == pytest.approx(expected)
    assert reward.last_think_share == pytest.approx(0.6)


def test_adaptive_pays_malformed_replies_at_the_think_rates():
    """Only a well-formed direct answer earns the no-think rates: a thought without its closing tag (the hack
    GRPO found on the toy), a direct answer with trailing text, a reply with no tags are paid as thoughts,
    right or wrong, so none out-earns the well-formed reply it stands for."""
    completions = [
        "<think>first high, so fourth, fourth low<answer>cello</answer>",  # no </think>: thinks, malformed
        "<answer>cello</answer> and more",  # direct, malformed
        "cello",  # no tags
        "<think>first high<answer>violin</answer>",  # wrong
        NO_THINK_RIGHT,
    ]
    scores = AdaptiveThink(balance=False)(completions, **columns(5))
    assert scores == [1.0, 1.0, 1.0, 0.0, 2.0]
    reward = AdaptiveThink()  # with the balance term: the think rates of the batch's λ
    lam, rest = 0 / 5, 1.0  # no well-formed think block in the batch
    scores = reward(completions, **columns(5), trainer_state=state(0, 100))
    assert scores[:4] == pytest.approx([E(-lam * rest), E(-lam * rest), E(-lam * rest), -(1 - E(-lam * rest))])
    assert scores[4] == pytest.approx(2 * E(-(1 - lam) * rest))


def test_adaptive_balance_off_gives_base_values():
    completions = [THINK_RIGHT, THINK_WRONG, NO_THINK_RIGHT, NO_THINK_WRONG]
    assert AdaptiveThink(balance=False)(completions, **columns(4), trainer_state=state(0, 100)) == [
        1.0,
        0.0,
        2.0,
        -1.0,
    ]
    custom = AdaptiveThink(balance=False, think_correct=1.5, think_wrong=-0.5, no_think_correct=3.0, no_think_wrong=-2.0)
    assert custom(completions, **columns(4)) == [1.5, -0.5, 3.0, -2.0]


@pytest.mark.parametrize(
    "trainer_state",
    [None, state(5, 0), state(5, -1), SimpleNamespace(), SimpleNamespace(global_step=None, max_steps=10)],
)
def test_adaptive_unknown_progress_is_start(trainer_state):
    scores = AdaptiveThink()([THINK_RIGHT], **columns(1), trainer_state=trainer_state)
    assert scores == pytest.approx([E(-1)])


def test_adaptive_two_ranks_uses_the_gathered_batch():
    rank0 = [THINK_RIGHT, THINK_WRONG]  # all think
    rank1 = [NO_THINK_RIGHT, NO_THINK_WRONG]  # all no-think
    ts = state(0, 100)
    reward = AdaptiveThink()

    alone = reward(rank0, **columns(2), trainer_state=ts)
    assert reward.last_think_share == 1.0
    gathered = reward(rank0 + rank1, **columns(4), trainer_state=ts)
    assert reward.last_think_share == 0.5

    assert gathered[:2] != pytest.approx(alone)
    g = E(-0.5)
    assert gathered == pytest.approx([g, -(1 - g), 2 * g, -g - 2 * (1 - g)])
    assert alone == pytest.approx([E(-1), -(1 - E(-1))])


def test_adaptive_row_without_gold_is_none_but_counts_for_lambda():
    reward = AdaptiveThink()
    scores = reward(
        [THINK_RIGHT, NO_THINK_RIGHT],
        answer=["viola", "cello"],
        choices=[CHOICES, CHOICES],
        trainer_state=state(0, 10),
    )
    assert scores[0] is None
    assert scores[1] == pytest.approx(2 * E(-0.5))
    assert reward.last_think_share == 0.5


@pytest.mark.parametrize("completion", [c for c, _ in FORMAT_CASES])
def test_adaptive_never_raises(completion):
    (score,) = AdaptiveThink()([completion], **columns(1), trainer_state=state(3, 10))
    assert isinstance(score, float) and math.isfinite(score)


def test_adaptive_empty_batch():
    reward = AdaptiveThink()
    assert reward([], answer=[], choices=[]) == []
    assert reward.last_think_share == 0.0


# A NaN λ or progress (a step count that is not a number, a share over no completions) is read as the start of
# training: λ = 0 (no thinking yet) and p = 0 (the balance at full strength), never as 1.
@pytest.mark.parametrize("thinks, correct, lam, progress, expected", [
    (True, True, float("nan"), 0.0, 1.0),                    # λ = 0: γ_think = exp(0) = 1
    (True, False, float("nan"), 0.0, 0.0),                   # think_wrong - (1 - 1)
    (False, True, float("nan"), 0.0, 2 * math.exp(-1.0)),    # γ_no = exp(-(1 - 0) * 1)
    (False, False, float("nan"), 0.0, -math.exp(-1.0) - 2 * (1 - math.exp(-1.0))),
    (True, True, 1.0, float("nan"), math.exp(-1.0)),         # p = 0: remaining 1
    (True, False, 1.0, float("nan"), -(1 - math.exp(-1.0))),
    (False, True, 0.0, float("nan"), 2 * math.exp(-1.0)),
    (True, True, float("nan"), float("nan"), 1.0),
])
def test_adaptive_value_reads_nan_as_the_start(thinks, correct, lam, progress, expected):
    from audiothink.rewards.adaptive_think import adaptive_value

    assert adaptive_value(thinks, correct, lam, progress) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, total", [(float("nan"), 10), (3, float("nan")), (float("nan"), float("nan"))])
def test_a_step_count_that_is_not_a_number_is_progress_0(step, total):
    from types import SimpleNamespace

    from audiothink.rewards.adaptive_think import _progress

    assert _progress(SimpleNamespace(global_step=step, max_steps=total)) == 0.0
    reward = AdaptiveThink()  # an all-think batch: λ = 1; at p = 0 a right thought pays exp(-1)
    out = reward(["<think>bowed</think><answer>cello</answer>"], ["cello"], [["violin", "cello"]],
                 trainer_state=SimpleNamespace(global_step=step, max_steps=total))
    assert out == [pytest.approx(math.exp(-1.0))]
