"""The hf judge on a tiny random causal LM built offline: batching, strict parsing, nothing escapes."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from audiothink.judge import HFJudge
from audiothink.toy import TOY_MODEL_DIR
from audiothink.plumbing.errors import ConfigError
from audiothink.rewards import Consistency, ThinkQuality

PROMPTS = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs/judge/prompts/v1.yaml"))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer Qwen2ForCausalLM with random weights and the toy's byte-level tokenizer."""
    path = tmp_path_factory.mktemp("tiny_judge")
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _items(n_distinct, repeat=2):
    thinks = [f"i count {w} beeps" for w in ["one", "two", "three", "four", "five"][:n_distinct]] * repeat
    return [{"question": "how many beeps?", "choices": ["one", "two"], "think": t, "answer": "two"} for t in thinks]


def _judge(path, **kw):
    return HFJudge(path=str(path), prompts=PROMPTS, device="cpu", dtype="float32", max_new_tokens=4, **kw)


def test_random_model_scores_in_batches_without_raising(tiny_lm):
    judge = _judge(tiny_lm, batch_size=2)
    logged = []
    items = _items(5)  # 10 samples, 5 distinct prompts
    scores = asyncio.run(judge.score("think_quality", items, log_metric=lambda k, v: logged.append((k, v))))
    assert len(scores) == 10
    assert judge.batches == 3  # 5 distinct prompts in batches of 2; duplicates are not generated twice
    # a random model says anything: each score is None or a 0.1-step rating, counted when None
    assert all(s is None or (0 <= s <= 1 and math.isclose(s * 10, round(s * 10))) for s in scores)
    assert scores[:5] == scores[5:]  # greedy: the same prompt gets the same score
    assert dict(logged)["judge/failures"] == sum(s is None for s in scores) == judge.failures


def test_replies_are_parsed_strictly(tiny_lm, monkeypatch):
    judge = _judge(tiny_lm, batch_size=8)
    replies = {"one": "Yes.\nbecause", "two": " no", "three": "yes, mostly", "four": "maybe"}

    def fake_generate(texts):
        return [next(r for w, r in replies.items() if f"i count {w} beeps" in t) for t in texts]

    monkeypatch.setattr(judge, "generate", fake_generate)
    scores = asyncio.run(judge.score("consistency", _items(4, repeat=1)))
    assert scores == [1.0, 0.0, None, None]
    assert judge.failures == 2


def test_generate_errors_become_none(tiny_lm, monkeypatch):
    judge = _judge(tiny_lm, batch_size=2)
    calls = []

    def flaky(texts):
        calls.append(len(texts))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return ["0.3"] * len(texts)

    monkeypatch.setattr(judge, "generate", flaky)
    scores = asyncio.run(judge.score("think_quality", _items(3, repeat=1)))
    assert calls == [2, 1]
    assert scores == [None, None, 0.3] and judge.failures == 2


def test_rewards_run_on_the_hf_judge(tiny_lm):
    judge = _judge(tiny_lm)
    completions = ["<think>i count two beeps</think><answer>two</answer>", "<answer>one</answer>"]
    columns = {"question": ["how many beeps?"] * 2, "choices": [["one", "two"]] * 2, "answer": ["two"] * 2}
    r_c = asyncio.run(Consistency(judge)(completions, **columns))
    r_t = asyncio.run(ThinkQuality(judge)(completions, **columns))
    assert r_c[1] == 1.0 and r_c[0] in (0.0, 1.0, None)
    assert r_t[0] in [None] + [i / 10 for i in range(11)]
    assert r_t[1] == (0.0 if r_t[0] is None else r_t[0])  # the no-think sample gets the think mean


def test_same_checkpoint_is_loaded_once(tiny_lm):
    assert _judge(tiny_lm).model is _judge(tiny_lm, batch_size=3).model


def test_missing_checkpoint_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        HFJudge(path=str(tmp_path / "nope"), prompts=PROMPTS)


def _greedy_alone(judge, text: str) -> str:
    """The judge model's argmax continuation of ``text`` on its own (no batch, no padding), token by token."""
    tok = judge.tokenizer
    ids = tok(text, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(judge.max_new_tokens):
            nxt = int(judge.model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def test_batched_replies_are_the_greedy_replies_of_each_prompt_alone(tiny_lm):
    """Issue 17 (mutants that survived): padding on the right (generation would continue after the pad tokens
    of the shorter prompts) or sampling instead of greedy (the same reasoning scored differently) change the
    replies. Prompts of different lengths in one batch must get exactly the replies each gets alone, greedily."""
    judge = _judge(tiny_lm, batch_size=8)
    judge.max_new_tokens = 6
    texts = [PROMPTS["think_quality"]["template"].format(**item) for item in _items(1, repeat=1)]
    texts += ["short", "a somewhat longer prompt than the others, " * 3]
    assert len({len(judge.tokenizer(t)["input_ids"]) for t in texts}) == 3  # three lengths: padding is needed
    alone = [_greedy_alone(judge, t) for t in texts]
    assert len(set(alone)) > 1 and all(alone)  # replies that can tell a mistake apart
    assert judge.generate(texts) == alone
    assert [judge.generate([t])[0] for t in texts] == alone


def test_the_same_prompts_get_the_same_replies_whatever_the_seed(tiny_lm):
    judge = _judge(tiny_lm, batch_size=8)
    judge.max_new_tokens = 6
    texts = ["short", "a somewhat longer prompt than the others"]
    replies = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)  # sampling would draw other tokens under another seed
        replies.append(judge.generate(texts))
    assert replies[0] == replies[1] == replies[2]


def test_the_probe_is_one_real_generate_whose_reply_must_parse(tiny_lm):
    """The start-up probe asks the loaded model once; its verdict is the scoring path's verdict on that item."""
    from audiothink.judge.base import PROBE_ITEM

    judge = _judge(tiny_lm)
    before = judge.batches
    problem = judge.probe("think_quality")
    assert judge.batches == before + 1  # one generate() call, one prompt
    score = asyncio.run(judge.score("think_quality", [PROBE_ITEM]))[0]
    assert (problem is None) == (score is not None)
    if problem is not None:  # a random model answers anything
        assert "to the 'think_quality' prompt does not parse" in problem


@pytest.mark.parametrize(("reply", "said"), [
    ("yes", None),
    ("Yes.\nbecause", None),
    ("yes, mostly", "the reply 'yes, mostly' to the 'consistency' prompt does not parse (expected one of yes, no"),
    (RuntimeError("CUDA out of memory (simulated)"), "generate failed (RuntimeError: CUDA out of memory (simulated))"),
])
def test_probe_verdicts(tiny_lm, monkeypatch, reply, said):
    from audiothink.judge.watch import probe_judges

    judge = _judge(tiny_lm)

    def generate(texts):
        assert len(texts) == 1 and "i count" not in texts[0] and "(B) two" in texts[0]  # the probe item
        if isinstance(reply, Exception):
            raise reply
        return [reply]

    monkeypatch.setattr(judge, "generate", generate)
    problem = judge.probe("consistency")
    assert problem == said if said is None else problem.startswith(said)
    reward = Consistency(judge)
    reward.__name__ = "consistency"
    if said is None:
        probe_judges([reward])
    else:
        with pytest.raises(ConfigError, match=rf"judge\.path={tiny_lm} .*reward\.consistency"):
            probe_judges([reward])
