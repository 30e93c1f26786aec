"""audiothink.think_metrics: how the model thinks (chain_metrics) on known completions, and in a real training step
(logged with the think/* metrics, equal to what the step's own completions give)."""

from __future__ import annotations

import json

import pytest

from audiothink.think_metrics import chain_metrics
from audiothink.toy.data import _QUESTIONS, task_values

PITCH, HOP = _QUESTIONS["pitch"], _QUESTIONS["count_hop"]

# (completion, question, gold, difficulty, inconsistent, invalid chain, correct); thought-out toy rows only
KNOWN = [
    ("<think>first middle, so middle</think><answer>middle</answer>", PITCH, "middle", "easy", 0, 0, 1),
    ("<think>first low, so middle</think><answer>middle</answer>", PITCH, "middle", "easy", 0, 1, 1),  # lucky
    ("<think>first high, so high</think><answer>middle</answer>", PITCH, "middle", "easy", 1, 0, 1),  # says another
    ("<think>first high, so high</think><answer>high</answer>", PITCH, "middle", "easy", 0, 0, 0),  # misheard
    ("<think>first two, so third, third three, so three</think><answer>three</answer>", HOP, "three", "hard", 0, 0, 1),
    ("<think>first two, so fourth, fourth three, so three</think><answer>three</answer>", HOP, "three", "hard",
     0, 1, 1),  # a lucky hop
    ("<think>first two, so third, so three</think><answer>three</answer>", HOP, "three", "hard", 0, 1, 1),  # skipped
    ("<think>first two, so third, third one, so one</think><answer>three</answer>", HOP, "three", "hard", 1, 0, 1),
    ("<think>three i think</think><answer>one</answer>", HOP, "three", "hard", 1, 1, 0),  # malformed: not valid
]
# not counted: direct answers, malformed completions without a think block, rows of other questions
NOT_COUNTED = [
    ("<answer>middle</answer>", PITCH, "middle", "easy"),
    ("<think>first two, so two", PITCH, "middle", "easy"),
    ("<think>it is bowed</think><answer>cello</answer>", "which instrument?", "cello", "easy"),
]


def _columns(rows):
    return {"question": [r[1] for r in rows], "answer": [r[2] for r in rows], "difficulty": [r[3] for r in rows],
            "choices": [["violin", "cello"] if r[2] == "cello" else list(task_values("pitch" if r[1] == PITCH else
                                                                                   "count_hop")) for r in rows]}


def _share(rows, col, where=lambda r: True):
    sel = [r for r in rows if where(r)]
    return sum(r[col] for r in sel) / len(sel)


def test_chain_metrics_on_known_completions_per_difficulty():
    rows = KNOWN + NOT_COUNTED
    got = chain_metrics([r[0] for r in rows], _columns(rows))
    expected = {}
    for suffix, sel in (("", KNOWN), ("/easy", KNOWN[:4]), ("/hard", KNOWN[4:])):
        expected[f"think/inconsistent_share{suffix}"] = _share(sel, 4)
        expected[f"think/invalid_chain_share{suffix}"] = _share(sel, 5)
        expected[f"think/invalid_correct_share{suffix}"] = _share(sel, 5, where=lambda r: r[6])
    assert got == pytest.approx(expected)
    assert set(got) == set(expected)
    # the figures by hand: easy 1/4 inconsistent, 1/4 invalid, 1/3 of the correct ones invalid
    assert (got["think/inconsistent_share/easy"], got["think/invalid_chain_share/easy"],
            got["think/invalid_correct_share/easy"]) == pytest.approx((0.25, 0.25, 1 / 3))
    assert (got["think/inconsistent_share/hard"], got["think/invalid_chain_share/hard"],
            got["think/invalid_correct_share/hard"]) == pytest.approx((0.4, 0.6, 0.5))


def test_chain_metrics_leave_out_what_they_cannot_measure():
    assert chain_metrics([r[0] for r in NOT_COUNTED], _columns(NOT_COUNTED)) == {}
    assert chain_metrics(["<think>first two, so two</think><answer>two</answer>"], {}) == {}
    # no difficulty column: overall only; no correct thought-out answer: no invalid_correct share
    got = chain_metrics([KNOWN[3][0]], {k: v for k, v in _columns(KNOWN[3:4]).items() if k != "difficulty"})
    assert got == {"think/inconsistent_share": 0.0, "think/invalid_chain_share": 0.0}


def test_a_training_step_logs_the_shares_of_its_own_completions(toy_model_dir, toy_files, tmp_path):
    """A real step, forced to think and sampled hot so that some chains break: the logged shares are chain_metrics
    of the completions the step wrote to completions.jsonl (all of them: 2 prompts x G = 4)."""
    from audiothink.data import load_samples, to_dataset
    from audiothink.formats import THINK_OPEN
    from audiothink.rewards import AdaptiveThink, Format
    from audiothink.trainer import AudioGRPOTrainer
    from tests.helpers import PROMPT, load_toy, toy_grpo_args

    model, processor = load_toy(toy_model_dir)
    samples = load_samples(toy_files["train"]).samples
    rows = [s for s in samples if s.difficulty == "hard"][:1] + [s for s in samples if s.difficulty == "easy"][:1]
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[AdaptiveThink(), Format()],
        args=toy_grpo_args(tmp_path, per_device_train_batch_size=8, num_generations=4, temperature=2.0, seed=3),
        train_dataset=to_dataset(rows * 4, PROMPT), max_audio_seconds=2.0, completion_prompts=2, prefill=THINK_OPEN)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    records = [json.loads(x) for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    texts, columns = [], {"question": [], "choices": [], "answer": [], "difficulty": []}
    for r in records:
        for c in r["completions"]:
            texts.append(c["text"])
            for k in columns:
                columns[k].append(r[k])
    assert len(texts) == 8
    want = chain_metrics(texts, columns)
    assert want["think/invalid_chain_share"] > 0  # the hot samples do break chains: the check is not 0 == 0
    assert {k: logged[k] for k in want} == pytest.approx(want)
