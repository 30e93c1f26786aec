"""The full recipe R = R_a*(1 + 0.5*R_c) + 0.5*R_f + R_t, by hand, through the trainer's reward pass."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audiothink.formula import Formula
from audiothink.plumbing.errors import ConfigError
from audiothink.reward_api import build_rewards
from audiothink.plumbing.cli import register_resolvers
from audiothink.rewards import AdaptiveThink, Consistency, Format, ThinkQuality
from tests.reward_testing import TableJudge, toy_trainer
from tests.helpers import CONFIGS

FULL = "adaptive_think * (1 + 0.5 * consistency) + 0.5 * format + think_quality"
Q, CHOICES, GOLD = "how many beeps do you hear?", ["one", "two"], "two"
register_resolvers()

# Think texts and what the (table) judge says about them: consistency yes/no, think quality.
A, B, C, D = "i count two beeps", "one one one one", "i count two beeps, no one", "i lost count"
JUDGE = {"consistency": {A: 1.0, C: 0.0, D: 1.0}, "think_quality": {A: 0.9, B: 0.2, C: 0.5, D: None}}


def _full_trainer(toy_model_dir, toy_files, tmp_path, judge, balance=False, only_correct=True):
    rewards = [AdaptiveThink(balance=balance), Consistency(judge, only_correct=only_correct),
               ThinkQuality(judge), Format(), Formula(FULL)]
    trainer = toy_trainer(toy_model_dir, toy_files, tmp_path, rewards, weights=[0, 0, 0, 0, 1], max_steps=10)
    trainer.state.max_steps, trainer.state.global_step = 10, 0
    trainer.model.train()
    return trainer


def _rewards(trainer, completions):
    rows = [{"prompt": Q, "question": Q, "answer": GOLD, "choices": CHOICES, "id": f"r{i}"} for i in completions]
    out = trainer._calculate_rewards(rows, [r["prompt"] for r in rows], completions, [[1]] * len(completions))
    names = trainer.reward_func_names
    assert names == ["adaptive_think", "consistency", "think_quality", "format", "total"]
    return {n: [None if math.isnan(v) else round(v, 6) for v in out[:, i].tolist()] for i, n in enumerate(names)}


def test_full_recipe_by_hand(toy_model_dir, toy_files, tmp_path):
    judge = TableJudge(JUDGE)
    trainer = _full_trainer(toy_model_dir, toy_files, tmp_path, judge)
    completions = [
        f"<think>{A}</think><answer>two</answer>",  # think, right, consistent
        f"<think>{B}</think><answer>one</answer>",  # think, wrong: not judged for consistency (R_c 0)
        f"<think>{C}</think><answer>two</answer>",  # think, right, inconsistent
        "<answer>two</answer>",                     # no-think, right
        "<answer>one</answer>",                     # no-think, wrong
        "two",                                      # malformed, no tags: the benchmarks score the raw output
    ]
    got = _rewards(trainer, completions)
    # Hand computation (balance off: R_a = think +1/0, no-think +2/-1; correctness by the benchmarks' rule on the
    # extracted answer, so the tagless "two" is correct; being malformed it is paid at the think rate, +1, and
    # gets no format reward: it earns less than the well-formed replies, right or thought out).
    # mean R_t of the think samples = (0.9 + 0.2 + 0.5) / 3 = 0.533333
    mean_t = round((0.9 + 0.2 + 0.5) / 3, 6)
    assert got["adaptive_think"] == [1.0, 0.0, 1.0, 2.0, -1.0, 1.0]
    assert got["consistency"] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert got["think_quality"] == [0.9, 0.2, 0.5, mean_t, mean_t, mean_t]
    assert got["format"] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    expected_total = [
        1.0 * (1 + 0.5 * 1) + 0.5 * 1 + 0.9,       # 2.9
        0.0 * (1 + 0.5 * 0) + 0.5 * 1 + 0.2,       # 0.7
        1.0 * (1 + 0.5 * 0) + 0.5 * 1 + 0.5,       # 2.0
        2.0 * (1 + 0.5 * 1) + 0.5 * 1 + mean_t,    # 3.5 + 0.533333
        -1.0 * (1 + 0.5 * 1) + 0.5 * 1 + mean_t,   # -1.0 + 0.533333
        1.0 * (1 + 0.5 * 1) + 0.5 * 0 + mean_t,    # 1.5 + 0.533333
    ]
    assert got["total"] == pytest.approx([2.9, 0.7, 2.0, 4.033333, -0.466667, 2.033333], abs=1e-5)
    assert got["total"] == pytest.approx(expected_total, abs=1e-5)
    # only correct think answers went to the consistency judge, every think block to the quality judge
    assert [(t, i["think"]) for t, i in judge.seen] == [
        ("consistency", A), ("consistency", C), ("think_quality", A), ("think_quality", B), ("think_quality", C)]
    # via TRL's log_metric: one latency per judge call, failures summed into one count per step
    pending = trainer._pending_metrics
    assert len(pending["judge/latency_s"]) == 2 and pending["judge/failures"] == [0.0]


def test_only_correct_off_judges_wrong_answers_too(toy_model_dir, toy_files, tmp_path):
    table = {"consistency": {A: 1.0, B: 1.0}, "think_quality": {A: 0.9, B: 0.2}}
    trainer = _full_trainer(toy_model_dir, toy_files, tmp_path, TableJudge(table), only_correct=False)
    got = _rewards(trainer, [f"<think>{A}</think><answer>two</answer>", f"<think>{B}</think><answer>one</answer>"])
    assert got["consistency"] == [1.0, 1.0]
    assert got["total"] == pytest.approx([2.9, 0.0 * 1.5 + 0.5 + 0.2])


def test_batch_without_think_samples(toy_model_dir, toy_files, tmp_path):
    """No think sample at all: R_c = 1 for all, R_t = empty_value (0) for all; balance on, λ = 0, p = 0."""
    judge = TableJudge(JUDGE)
    trainer = _full_trainer(toy_model_dir, toy_files, tmp_path, judge, balance=True)
    got = _rewards(trainer, ["<answer>two</answer>", "<answer>one</answer>", "<answer>(B) two</answer>"])
    g = math.exp(-1.0)  # γ_no = exp(-(1 - λ)(1 - p)) with λ = 0, p = 0
    r_a = [2 * g, -g - 2 * (1 - g), 2 * g]  # 0.735759, -1.632121, 0.735759
    assert got["adaptive_think"] == pytest.approx(r_a, abs=1e-6)
    assert got["consistency"] == [1.0, 1.0, 1.0]
    assert got["think_quality"] == [0.0, 0.0, 0.0]
    assert got["total"] == pytest.approx([a * 1.5 + 0.5 for a in r_a], abs=1e-5)
    assert got["total"] == pytest.approx([1.603638, -1.948181, 1.603638], abs=1e-5)
    assert judge.seen == []  # nothing to judge


def test_judge_failure_drops_the_sample_not_scores_it_zero(toy_model_dir, toy_files, tmp_path):
    judge = TableJudge(JUDGE)
    trainer = _full_trainer(toy_model_dir, toy_files, tmp_path, judge)
    got = _rewards(trainer, [f"<think>{A}</think><answer>two</answer>", f"<think>{D}</think><answer>two</answer>",
                             "<answer>two</answer>"])
    # D's quality judgment failed: its total is None, and so is every column of its row, so that TRL leaves
    # it out of the group baseline (weight-0 columns alone would keep it in and TRL would pay it 0)
    assert got["total"][1] is None and all(got[n][1] is None for n in got)
    # the failed sample is left out of the batch mean too: the no-think sample gets A's 0.9
    assert got["think_quality"][2] == 0.9
    assert got["total"] == pytest.approx([2.9, None, 2.0 * 1.5 + 0.5 + 0.9])
    assert trainer._pending_metrics["judge/failures"] == [1.0]  # one per step, summed over judge calls


def test_a_malformed_toy_chain_is_scored_not_dropped_by_the_full_recipe(toy_model_dir, toy_files, tmp_path):
    """Issue 21's defect: with the toy logic judge, a thought outside the chain language had no think quality
    (None), so its total and every column of its row were None and the sample left the step -- a wrong answer
    after such a thought escaped its negative advantage, and GRPO learned to write one whenever unsure (row f:
    think on easy items 100 %, accuracy 79.7 %). It is scored as an invalid chain: every reward has a value."""
    from audiothink.judge import ToyLogicJudge
    from audiothink.toy.data import _QUESTIONS, task_values

    q, ch = _QUESTIONS["count_hop"], list(task_values("count_hop"))
    trainer = _full_trainer(toy_model_dir, toy_files, tmp_path, ToyLogicJudge())
    completions = ["<think>first two, so third, third three, so three</think><answer>three</answer>",  # valid
                   "<think>first two, so third, third one, so one</think><answer>one</answer>",  # valid, wrong
                   "<think>first three low middle</think><answer>one</answer>",  # malformed (seen), wrong
                   "<think>three, i think</think><answer>three</answer>",  # malformed, right
                   "<answer>one</answer>"]  # direct, wrong
    rows = [{"prompt": q, "question": q, "answer": "three", "choices": ch, "id": f"r{i}"} for i in range(5)]
    out = trainer._calculate_rewards(rows, [q] * 5, completions, [[1]] * 5)
    got = {n: [None if math.isnan(v) else round(v, 6) for v in out[:, i].tolist()]
           for i, n in enumerate(trainer.reward_func_names)}
    assert all(None not in v for v in got.values()), got
    assert got["think_quality"][:4] == [1.0, 1.0, 0.0, 0.0]
    # the malformed wrong thought earns less than the valid wrong one (by think quality), and is in the step
    assert got["total"][2] < got["total"][1] and got["total"][3] < got["total"][0]
    assert trainer._pending_metrics["judge/failures"] == [0.0]


def test_formula_syntax_is_restricted():
    assert Formula("-a + 2 * (b - c) / 4", known=["a", "b", "c"]).evaluate({"a": 1, "b": 3, "c": 1}) == 0.0
    assert Formula("a / b").evaluate({"a": 1.0, "b": 0.0}) is None
    for bad, what in [("a ** 2", "Pow"), ("a if b else c", "IfExp"), ("max(a, b)", "function calls"),
                      ("a.real", "attributes"), ("a[0]", "subscripts"), ("a < b", "comparisons"),
                      ("a and b", "and/or"), ("'a'", "Constant"), ("True", "Constant"), ("a +", "not an expression"),
                      ("", "expected an expression"), ("lambda: 1", "Lambda")]:
        with pytest.raises(ConfigError, match="reward.formula"):
            Formula(bad)
        try:
            Formula(bad)
        except ConfigError as e:
            assert what in str(e), (bad, str(e))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_full_preset_builds_the_formula_with_weights():
    funcs, weights = build_rewards(_compose(["reward=full"]).reward)
    names = [f.__name__ for f in funcs]
    assert names == ["adaptive_think", "consistency", "think_quality", "format", "accuracy", "total"]
    assert weights == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert funcs[-1].expression == FULL
    assert type(funcs[1].judge).__name__ == "RuleJudge" and funcs[1].only_correct is True


@pytest.mark.parametrize("overrides,match", [
    (["reward=full", "~reward.consistency"], r"unknown reward name\(s\) \['consistency'\]"),
    (["reward=full", "reward.formula='adaptive_think * bogus'"], r"unknown reward name\(s\) \['bogus'\]"),
    (["reward=full", "reward.formula='__import__(1)'"], "function calls are not allowed"),
    (["reward=adaptive", "+reward.total.weight=1", "+reward.total.fn._target_=audiothink.rewards.Format"], "reserved"),
    (["reward=full", "+reward.consistency.fn.bogus=1"], r"reward.consistency: .*bogus"),
    (["reward=full", "judge=hf"], r"reward.consistency: Missing mandatory value: .*judge.path"),
    (["reward=full", "judge=hf", "judge.path=/nope"], r"reward.consistency: judge.path='/nope': no such checkpoint"),
    (["reward=full", "judge=openai", "judge.base_url=nonsense"], r"reward.consistency: judge.base_url='nonsense'"),
])
def test_bad_reward_config_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_rewards(_compose(overrides).reward)


def test_unknown_formula_name_stops_train_before_data_or_model(tmp_path, monkeypatch):
    from audiothink import sources, train

    cfg = _compose(["reward=full", "reward.formula='adaptive_think + nope'", f"output_dir={tmp_path}",
                    "data.root=/nonexistent/should-not-be-built"])
    touched = []
    monkeypatch.setattr(sources, "build_dataset", lambda *a, **k: touched.append("data"))
    monkeypatch.setattr(train, "build_dataset", lambda *a, **k: touched.append("data"))
    monkeypatch.setattr(train, "load_model_and_processor", lambda *a, **k: touched.append("model"))
    with pytest.raises(ConfigError, match="nope"):
        train.train(cfg)
    assert touched == []
    assert OmegaConf.load(tmp_path / "config.yaml").reward.formula == "adaptive_think + nope"


def test_a_formula_none_for_every_sample_warns_once(toy_model_dir, toy_files, tmp_path, caplog):
    """Issue 17: a formula that scores no sample while the other rewards do adds nothing for the whole run; it
    is named once, with the counts (here a judged reward whose judge gives no score: None everywhere)."""
    import logging

    def judged(completions, **kwargs):
        return [None] * len(completions)

    rewards = [Format(), judged, Formula("format * judged")]
    trainer = toy_trainer(toy_model_dir, toy_files, tmp_path, rewards, weights=[1, 0, 1])
    trainer.model.train()
    rows = [{"prompt": Q, "question": Q, "answer": GOLD, "choices": CHOICES, "id": f"r{i}"} for i in range(4)]
    direct = ["<answer>two</answer>", "<answer>one</answer>", "two", "<answer>two</answer>"]
    with caplog.at_level(logging.WARNING, logger="audiothink.formula"):
        for _ in range(2):  # two steps: one warning
            out = trainer._calculate_rewards(rows, [Q] * 4, direct, [[1]] * 4)
    assert trainer.reward_func_names == ["format", "judged", "total"]
    assert torch_isnan(out[:, 2]).all() and not torch_isnan(out[:, 0]).any()
    warnings = [r.getMessage() for r in caplog.records if r.name == "audiothink.formula"]
    assert warnings == [
        "reward 'total' (reward.formula 'format * judged') is None for all 4 samples of this batch while other "
        "rewards score (format 4/4): it adds nothing to this step's reward. Components without a value: "
        "judged 4/4. (Logged once per run.)"]


def test_a_formula_none_where_nothing_scores_is_left_to_the_health_monitor(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="audiothink.formula"):
        Formula("a / b")(["x", "y"], {"a": [None, None], "b": [None, None]})
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="audiothink.formula"):
        Formula("a / b")(["x", "y"], {"a": [1.0, 2.0], "b": [0.0, 0.0]})  # zero division on every sample
    assert "Components without a value: none (a zero division" in caplog.records[0].getMessage()


def torch_isnan(t):
    import torch

    return torch.isnan(t)


# Completions a policy can write: empty, tags only, half tags, nested, repeated blocks, free text, noise.
ADVERSARIAL = ["", "<think></think>", "<think>", "</think><answer>three</answer>", "<answer></answer>",
               "<think>first two</think>", "<think><think>so three</think></think><answer>three</answer>",
               "<think>so three</think><answer>three</answer><answer>one</answer>", "three three three",
               "<think>ÿ\x00 ☃</think><answer>☃</answer>", "<think>" + "first two, " * 200 + "</think><answer>x",
               "<answer>three</answer><think>first two, so two</think>", "<think>a\nb</think>\n<answer>(C) three</answer>"]


@pytest.mark.parametrize("judge_name", ["rule", "toy_logic"])
def test_no_builtin_reward_gives_the_models_text_no_score(judge_name, toy_model_dir, toy_files, tmp_path):
    """The kind of the defect above: a None the completion's text can provoke takes the sample out of the step.
    With the data sound (gold among the choices) and an offline judge, every built-in reward and the formula score
    every one of these completions."""
    from audiothink.judge import RuleJudge, ToyLogicJudge
    from audiothink.rewards import Accuracy, Repetition, ThinkLength
    from audiothink.toy.data import _QUESTIONS, task_values

    judge = {"rule": RuleJudge, "toy_logic": ToyLogicJudge}[judge_name]()
    rewards = [AdaptiveThink(balance=True), Consistency(judge, only_correct=True), ThinkQuality(judge), Format(),
               Accuracy(), Repetition(), ThinkLength(target=4, tolerance=1), Formula(FULL)]
    trainer = toy_trainer(toy_model_dir, toy_files, tmp_path, rewards, weights=[0, 0, 0, 0, 0, 0, 0, 1],
                          max_steps=10)
    trainer.state.max_steps, trainer.state.global_step = 10, 0
    trainer.model.train()
    n = len(ADVERSARIAL)
    rows = [{"prompt": q, "question": q, "answer": task_values(t)[2], "choices": list(task_values(t)), "id": f"r{i}"}
            for i, (t, q) in enumerate(sorted(_QUESTIONS.items()) * n)][:n]
    out = trainer._calculate_rewards(rows, [r["prompt"] for r in rows], ADVERSARIAL, [[1]] * n)
    unscored = {name: [ADVERSARIAL[i] for i in range(n) if math.isnan(out[i, k])]
                for k, name in enumerate(trainer.reward_func_names)}
    assert not any(unscored.values()), unscored
