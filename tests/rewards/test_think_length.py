"""rewards/think_length.py: the band, in words and in tokens of a real tokenizer."""

from __future__ import annotations

import pytest

from audiothink.rewards import ThinkLength


def test_think_length_band():
    reward = ThinkLength(target=40, tolerance=20)
    think = lambda n: "<think>" + "w " * n + "</think><answer>a</answer>"  # noqa: E731
    assert reward([think(20), think(40), think(60)]) == [0.0, 0.0, 0.0]
    assert reward([think(80), think(100), think(500), think(10)]) == [-0.5, -1.0, -1.0, -0.25]
    assert ThinkLength(target=40, tolerance=20, penalize_short=False)([think(1)]) == [0.0]
    assert reward(["<answer>a</answer>", "garbage"]) == [0.0, 0.0]
    with pytest.raises(ValueError):
        ThinkLength(target=0)


def test_think_length_counts_tokens_with_a_tokenizer(toy_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_model_dir)
    text = "i count three beeps and then two more"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    reward = ThinkLength(target=n, tolerance=0, tokenizer=str(toy_model_dir))
    assert reward.count(text) == n
    assert reward([f"<think>{text}</think><answer>a</answer>"]) == [0.0]
