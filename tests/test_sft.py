"""Supervised fine-tuning (python -m audiothink.sft): the audio is in every forward pass, only the target is
in the loss, the run folder has final/, and the toy's warm start is one use of the same loop and rows."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioModel

from audiothink import sft
from audiothink.data import DataError
from audiothink.prompts import training_prompt
from audiothink.toy import warmstart

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sft_rows(toy_files, tmp_path: Path, n: int = 8, target=None) -> Path:
    """The first ``n`` toy training rows with a target: thought out for even rows, direct for odd ones."""
    rows = [json.loads(line) for line in toy_files["train"].read_text().splitlines()[:n]]
    for i, row in enumerate(rows):
        row["audio"] = [str(toy_files["train"].parent / p) for p in (row["audio"] if isinstance(row["audio"], list)
                                                                     else [row["audio"]])]
        t = (f"<think>{row['rationale']}</think>" if i % 2 == 0 else "") + f"<answer>{row['answer']}</answer>"
        row["target"] = t if target is None else target(i, row)
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path, rows: Path, toy_files, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sft", overrides=[f"data.train={rows}", f"data.eval={toy_files['eval']}",
                                         "data.generate_toy=false", f"output_dir={tmp_path / 'run'}",
                                         "sft.batch_size=4", "sft.max_steps=2", "sft.logging_steps=1",
                                         "eval.num_samples=4", "eval.forced_modes=false", *overrides])


@contextmanager
def spy_forwards():
    """Every call of the Qwen2-Audio backbone (under the LM head): its rows, audio inputs, audio tokens, and
    whether labels reached the head (training passes) -- in any model the code under test builds."""
    calls = []
    original = Qwen2AudioModel.forward

    def spy(self, input_ids=None, *args, **kwargs):
        calls.append({"rows": input_ids.size(0), "seq_len": input_ids.size(1),
                      "features": kwargs.get("input_features") is not None,
                      "mask": kwargs.get("feature_attention_mask") is not None,
                      "clips": 0 if kwargs.get("input_features") is None else kwargs["input_features"].size(0),
                      "audio_tokens": int((input_ids == self.config.audio_token_id).sum()),
                      "grad": torch.is_grad_enabled()})
        return original(self, input_ids, *args, **kwargs)

    Qwen2AudioModel.forward = spy
    try:
        yield calls
    finally:
        Qwen2AudioModel.forward = original


def _training_passes(calls):
    return [c for c in calls if c["grad"]]


@pytest.mark.parametrize("model", ["toy", "toy_lora"])
def test_every_sft_forward_gets_the_audio(toy_files, tmp_path, model):
    rows = sft_rows(toy_files, tmp_path)
    cfg = _cfg(tmp_path, rows, toy_files, f"model={model}", "sft.gradient_accumulation_steps=2")
    with spy_forwards() as calls:
        summary = sft.sft(cfg)
    passes = _training_passes(calls)
    assert len(passes) == 2 * 2  # 2 steps x 2 micro-batches
    missing = [c for c in passes if not (c["features"] and c["mask"])]
    assert not missing, f"SFT forward passes without audio features: {missing}"
    # four rows a micro-batch, each of its clips in the pass and behind its audio tokens
    assert all(c["rows"] == 4 and c["clips"] >= 4 and c["audio_tokens"] > 0 for c in passes)
    run = tmp_path / "run"
    final = run / "final"
    assert (final / "model.safetensors").is_file() and (final / "processor_config.json").is_file()
    assert (final / "adapter" / "adapter_config.json").is_file() == (model == "toy_lora")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all(r["loss"] > 0 for r in logged)
    assert summary["after"]["overall"]["n"] == 4
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_omni_thinker_sft_gets_the_audio_in_every_pass(omni_dir, toy_files, tmp_path):
    """The Qwen2.5-Omni thinker (a tiny one, built offline): its forward gets the features each step, with LoRA."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    rows = sft_rows(toy_files, tmp_path)
    cfg = _cfg(tmp_path, rows, toy_files, "model=qwen2_5_omni_7b", f"model.path={omni_dir}", "model.dtype=float32",
               "model.attn_implementation=sdpa", "eval.num_samples=0")
    calls, original = [], Thinker.forward

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(kwargs.get("input_features") is not None and kwargs.get("labels") is not None)
        return original(self, *args, **kwargs)

    Thinker.forward = spy
    try:
        sft.sft(cfg)
    finally:
        Thinker.forward = original
    assert calls == [True, True]
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").is_file()


def test_spy_catches_an_sft_pass_without_audio(toy_files, tmp_path, monkeypatch):
    """The spy test above can fail: a loss that drops the features is seen."""
    rows = sft_rows(toy_files, tmp_path)
    cfg = _cfg(tmp_path, rows, toy_files, "eval.num_samples=0")

    def text_only(model, inputs):
        dropped = {k: v for k, v in inputs.items() if k not in ("input_features", "feature_attention_mask")}
        return model(**dropped).loss

    monkeypatch.setattr(sft, "sft_loss", text_only)
    with spy_forwards() as calls:
        try:
            sft.sft(cfg)
        except Exception:  # noqa: BLE001 - the model may refuse audio tokens without features; the spy saw the pass
            pass
    assert any(not c["features"] for c in _training_passes(calls))


def test_sft_loss_refuses_inputs_without_audio(toy_model_dir, toy_files, tmp_path):
    from tests.helpers import load_toy

    model, processor = load_toy(toy_model_dir)
    samples = [json.loads(line) for line in sft_rows(toy_files, tmp_path, n=2).read_text().splitlines()]
    waves = [[torch.zeros(8000).numpy()] for _ in samples]
    inputs = sft.encode_replies(processor, waves, ["a question"] * 2, [s["target"] for s in samples])
    del inputs["input_features"]
    with pytest.raises(RuntimeError, match="without audio features"):
        sft.sft_loss(model, inputs)


def test_only_the_target_tokens_are_in_the_loss(toy_model_dir):
    from tests.helpers import load_toy

    _, processor = load_toy(toy_model_dir)
    tok = processor.tokenizer
    waves = [[torch.zeros(8000).numpy()], [torch.zeros(8000).numpy(), torch.zeros(4000).numpy()]]
    targets = ["<think>first two, so two</think><answer>two</answer>", "<answer>high</answer>"]
    inputs = sft.encode_replies(processor, waves, ["how many beeps are there?", "which is higher?"], targets)
    for row, target in zip(inputs["labels"], targets, strict=True):
        supervised = row[row != -100].tolist()
        assert supervised == tok(target + tok.eos_token, add_special_tokens=False)["input_ids"]
    # the prompt part is the one prompt builder's, audio tokens included
    from audiothink.inference import encode_prompts

    prompt = encode_prompts(processor, waves, ["how many beeps are there?", "which is higher?"])
    width = prompt["input_ids"].size(1)
    assert torch.equal(inputs["input_ids"][:, :width], prompt["input_ids"])
    assert torch.equal(inputs["input_features"], prompt["input_features"])


def test_the_mode_tag_can_be_left_out_of_the_loss(toy_model_dir):
    """sft.mode_tag_loss=false: the opening tag of each target (the token choosing the mode) is not supervised;
    every other target token is, as with the tag in."""
    from tests.helpers import load_toy

    _, processor = load_toy(toy_model_dir)
    tok = processor.tokenizer
    waves = [[torch.zeros(8000).numpy()], [torch.zeros(8000).numpy()]]
    targets = ["<think>first two, so two</think><answer>two</answer>", "<answer>high</answer>"]
    prompts = ["how many beeps are there?", "which is higher?"]
    full = sft.encode_replies(processor, waves, prompts, targets)
    cut = sft.encode_replies(processor, waves, prompts, targets, mode_tag_loss=False)
    assert torch.equal(full["input_ids"], cut["input_ids"])
    for a, b, target in zip(full["labels"], cut["labels"], targets, strict=True):
        ids = tok(target + tok.eos_token, add_special_tokens=False)["input_ids"]
        tag = tok(target[: target.index(">") + 1], add_special_tokens=False)["input_ids"]
        assert ids[: len(tag)] == tag and len(tag) >= 1
        assert a[a != -100].tolist() == ids
        assert b[b != -100].tolist() == ids[len(tag):]


def test_target_mode_trains_on_that_modes_rows_only(toy_files, tmp_path, monkeypatch):
    """sft.target_mode=think: only the thought-out targets reach the loss (even rows of sft_rows), and the steps
    of an epoch count those rows; direct the same with the others."""
    rows = sft_rows(toy_files, tmp_path)  # 8 rows: 4 think, 4 direct
    seen = []
    real = sft.encode_replies
    monkeypatch.setattr(sft, "encode_replies", lambda *a, **kw: (seen.append((list(a[3]), kw)), real(*a, **kw))[1])
    for mode, opening in (("think", "<think>"), ("direct", "<answer>")):
        seen.clear()
        summary = sft.sft(_cfg(tmp_path / mode, rows, toy_files, "sft.max_steps=null", "sft.epochs=1",
                               f"sft.target_mode={mode}", "sft.mode_tag_loss=false", "eval.num_samples=0"))
        assert summary["steps"] == 1  # 4 rows, batch 4
        assert len(seen) == 1 and len(seen[0][0]) == 4 and all(t.startswith(opening) for t in seen[0][0])
        assert seen[0][1]["mode_tag_loss"] is False


def test_a_target_mode_no_row_has_is_refused(toy_files, tmp_path):
    rows = sft_rows(toy_files, tmp_path, target=lambda i, row: f"<answer>{row['answer']}</answer>")
    with pytest.raises(DataError, match="sft.target_mode=think: none of the 8 SFT rows has a think target"):
        sft.sft(_cfg(tmp_path, rows, toy_files, "sft.target_mode=think"))


def test_rows_without_a_usable_target_are_refused(toy_files, tmp_path):
    rows = sft_rows(toy_files, tmp_path, target=lambda i, row: "two" if i == 3 else f"<answer>{row['answer']}</answer>")
    cfg = _cfg(tmp_path, rows, toy_files)
    with pytest.raises(DataError, match="toy-train-00003"):
        sft.sft(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_warm_start_rows_are_its_training_targets_in_order(tmp_path):
    """`python -m audiothink.toy.warmstart --sft-rows DIR` writes, row for row, the (item, mode) pairs the warm
    start trains on, and the untrained model it starts from."""
    out = warmstart.main(["--sft-rows", str(tmp_path / "rows"), "--steps", "3", "--batch-size", "4", "--items", "5"])
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    pairs = [p for b in warmstart.warmstart_batches(3, 4, 0.4, 0, 5) for p in b]
    assert len(rows) == len(pairs) == 12
    for row, (item, think) in zip(rows, pairs, strict=True):
        assert row["target"] == warmstart.target(item, think)
        assert (row["question"], row["answer"], row["difficulty"]) == (item.question, item.answer, item.difficulty)
        assert len(row["audio"]) == len(item.clips) and all((out / p).is_file() for p in row["audio"])
    assert (out / "init" / "model.safetensors").is_file() and (out / "init" / "tokenizer.json").is_file()


def test_schedule_is_the_warm_starts():
    """Warm-up over 50 steps, constant, linear decay to 0 from 3/4 of the steps (the committed recipe)."""
    f = [sft.lr_factor(s, 1000, 50, 0.75) for s in range(1000)]
    assert f[0] == 1 / 50 and f[49] == 1.0 and f[749] == 1.0
    assert f[750] == 1.0 and abs(f[875] - 0.5) < 1e-12 and f[999] == pytest.approx(1 / 250)


def test_warm_start_through_the_shared_loop_is_its_former_own_loop(tmp_path):
    """The toy warm start's weights after a few steps of audiothink.sft's loop and loss equal, exactly, those of the
    loop warmstart.py had before (its own AdamW / schedule / clipping and loss, copied here as they were)."""
    from audiothink.audio import SAMPLE_RATE
    from audiothink.data import render_prompt
    from audiothink.toy.data import toy_items
    from audiothink.toy.model import CHAT_TEMPLATE, build_model, build_processor, build_tokenizer

    steps, batch = 6, 4
    out = warmstart.main(["--out", str(tmp_path / "new"), "--steps", str(steps), "--batch-size", str(batch)])

    torch.manual_seed(0)
    prompt = training_prompt()
    vocab = [warmstart.as_sample(it) for it in toy_items("warmstart", warmstart.TOKENIZER_ITEMS, 1)]
    tokenizer = build_tokenizer([render_prompt(s, prompt) for s in vocab] + [warmstart.target(s, True) for s in vocab]
                                + [CHAT_TEMPLATE] * 4)
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, seed=0, hidden=128, layers=2, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    decay_start = int(0.75 * steps)

    def lr_factor(step):
        warm = min(1.0, (step + 1) / 50)
        return warm if step < decay_start else warm * max(0.0, 1.0 - (step - decay_start) / max(1, steps - decay_start))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    tok = processor.tokenizer
    for pairs in warmstart.warmstart_batches(steps, batch, 0.4, 0, 2000):
        waves, texts, targets = [], [], []
        for item, t in pairs:
            waves.extend(item.clips)
            content = [{"type": "audio"}] * len(item.clips) + [
                {"type": "text", "text": render_prompt(warmstart.as_sample(item), prompt)}]
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                       add_generation_prompt=True))
            targets.append(warmstart.target(item, t) + tok.eos_token)
        enc = processor(text=texts, audio=waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        tgt = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
        ids = torch.full((len(pairs), max(map(len, tgt))), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(tgt):
            ids[i, : len(t)], mask[i, : len(t)] = torch.tensor(t), 1
        input_ids = torch.cat([enc["input_ids"], ids], 1)
        attention = torch.cat([enc["attention_mask"], mask], 1)
        labels = input_ids.masked_fill(attention == 0, -100)
        labels[:, : enc["input_ids"].size(1)] = -100
        loss = model(input_ids=input_ids, attention_mask=attention, input_features=enc["input_features"],
                     feature_attention_mask=enc["feature_attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.save_pretrained(tmp_path / "old", safe_serialization=True)
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def _sft(tmp_path: Path, rows: Path, toy_files, *overrides) -> tuple[bytes, list[dict], dict]:
    """An SFT run's final/ weights, metrics.jsonl rows and summary.json."""
    run = Path(sft.sft(_cfg(tmp_path, rows, toy_files, *overrides))["run_dir"])
    return ((run / "final" / "model.safetensors").read_bytes(),
            [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
            json.loads((run / "summary.json").read_text()))


# a constant learning rate: the first k steps of a longer run are a k-step run's, so final/ can be compared
CONSTANT_LR = ("sft.warmup_steps=0", "sft.decay_from=1.0")


def test_scoring_during_sft_leaves_the_run_as_it_was(toy_files, tmp_path):
    """eval.every_steps scores the held-out items on the way (metrics.jsonl rows, every mode) without changing
    the training: final/ is byte-identical to the run without it."""
    rows = sft_rows(toy_files, tmp_path)
    plain = _sft(tmp_path / "a", rows, toy_files, "sft.max_steps=3", *CONSTANT_LR)
    scored = _sft(tmp_path / "b", rows, toy_files, "sft.max_steps=3", "eval.every_steps=1",
                  "eval.forced_modes=true", "eval.sampled_temperature=1.2", *CONSTANT_LR)
    assert scored[0] == plain[0]
    heldout = [r for r in scored[1] if "heldout" in r]
    assert [r["step"] for r in heldout] == [1, 2]  # the last step is the summary's scoring
    assert all(set(r["heldout"]) == {"after", "after_think", "after_direct", "after_think_sampled"}
               for r in heldout)
    assert all(r["heldout"]["after"]["overall"]["n"] == 4 for r in heldout)
    assert scored[2]["steps"] == scored[2]["planned_steps"] == 3 and "stopped" not in scored[2]


def test_sft_stops_at_the_first_scoring_that_meets_the_rule(toy_files, tmp_path):
    """eval.stop_metric / eval.stop_at: the run stops at the first scoring whose figure reaches the value, and
    final/ is the weights of that step (byte-identical to a run of that many steps on the same schedule).
    Forced to answer directly a reply never thinks, so direct/think_rate >= 0 holds at the first scoring (step 2)."""
    rows = sft_rows(toy_files, tmp_path)
    two = _sft(tmp_path / "a", rows, toy_files, "sft.max_steps=2", *CONSTANT_LR)
    stop = ("sft.max_steps=6", "eval.every_steps=2", "eval.forced_modes=true", "eval.stop_metric=direct/think_rate")
    stopped = _sft(tmp_path / "b", rows, toy_files, *stop, "eval.stop_at=0.0", *CONSTANT_LR)
    assert stopped[0] == two[0]
    assert stopped[2]["steps"] == 2 and stopped[2]["planned_steps"] == 6
    assert stopped[2]["stopped"] == {"step": 2, "metric": "direct/think_rate", "value": 0.0, "stop_at": 0.0}
    assert max(r["step"] for r in stopped[1]) == 2
    # never reached (a direct reply never thinks): every step trained, no stop recorded
    never = _sft(tmp_path / "c", rows, toy_files, *stop, "eval.stop_at=0.5", *CONSTANT_LR)
    assert never[2]["steps"] == 6 and never[2]["stopped"] is None
    assert [r["step"] for r in never[1] if "heldout" in r] == [2, 4]


def _rates_of(monkeypatch, **kwargs) -> tuple[list[float], list[float]]:
    """train_steps on a one-weight model: the learning rate of each optimizer step, and the losses."""
    rates = []

    class Recording(torch.optim.AdamW):
        def step(self, *args, **kw):
            rates.append(self.param_groups[0]["lr"])
            return super().step(*args, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = torch.nn.Linear(1, 1)
    batches = ([torch.ones(1, 1)] for _ in range(100))
    losses = sft.train_steps(model, batches, lambda m, x: m(x).sum(), learning_rate=0.1, **kwargs)
    return rates, losses


def test_an_anneal_after_the_stop_decays_the_rate_towards_0_then_stops(monkeypatch):
    """on_step returning n: n more steps, the rate falling linearly from its value at that step (here in the warm-up,
    0.04) towards 0 (none at 0), then the loop ends; True stops at once; the planned steps bound the anneal."""
    rates, losses = _rates_of(monkeypatch, steps=10, warmup_steps=5, decay_from=1.0,
                              on_step=lambda step, losses: 3 if step == 1 else None)
    assert len(losses) == 5
    assert rates == pytest.approx([0.02, 0.04, 0.03, 0.02, 0.01])
    rates, losses = _rates_of(monkeypatch, steps=10, warmup_steps=0, decay_from=1.0,
                              on_step=lambda step, losses: step == 1)
    assert rates == pytest.approx([0.1, 0.1])
    # asked again during the anneal (ignored), and an anneal longer than the steps left: ends at the 6th step
    rates, losses = _rates_of(monkeypatch, steps=6, warmup_steps=0, decay_from=1.0,
                              on_step=lambda step, losses: 9 if step >= 3 else None)
    assert len(losses) == 6 and rates == pytest.approx([0.1] * 4 + [0.09, 0.08])


def test_sft_anneals_after_the_stop_rule_then_saves(toy_files, tmp_path):
    """eval.stop_anneal_steps=2: the rule met at step 2 of 6, steps 3 and 4 at a decaying rate (logged as trained),
    no scoring during the anneal, final/ and summary.json after step 4; other weights than a stop without it."""
    rows = sft_rows(toy_files, tmp_path)
    stop = ("sft.max_steps=6", "eval.every_steps=2", "eval.forced_modes=true", "eval.stop_metric=direct/think_rate",
            "eval.stop_at=0.0", *CONSTANT_LR)
    plain = _sft(tmp_path / "a", rows, toy_files, *stop)
    annealed = _sft(tmp_path / "b", rows, toy_files, *stop, "eval.stop_anneal_steps=2")
    lr = 1e-3  # configs/sft.yaml's rate
    assert [r["learning_rate"] for r in annealed[1] if "loss" in r] == pytest.approx([lr, lr, lr * 2 / 3, lr / 3])
    assert [r["step"] for r in annealed[1] if "heldout" in r] == [2]
    assert annealed[2]["steps"] == 4 and annealed[2]["planned_steps"] == 6
    assert annealed[2]["stopped"] == {"step": 2, "metric": "direct/think_rate", "value": 0.0, "stop_at": 0.0,
                                      "anneal_steps": 2}
    assert annealed[0] != plain[0]
    assert plain[2]["steps"] == 2


def test_a_rule_met_only_by_the_last_steps_scoring_is_not_reported_as_never_reached(toy_files, tmp_path, caplog):
    """The last step is scored once, for the summary, not during training: the rule is checked there too, so the
    "never reached" warning appears only when no scoring met it (here the only scoring is the last step's)."""
    rows = sft_rows(toy_files, tmp_path)
    rule = ("sft.max_steps=2", "eval.every_steps=5", "eval.forced_modes=true", "eval.stop_metric=direct/think_rate")
    with caplog.at_level(logging.INFO, logger="audiothink"):
        met = _sft(tmp_path / "a", rows, toy_files, *rule, "eval.stop_at=0.0", *CONSTANT_LR)
    assert met[2]["steps"] == 2 and met[2]["stopped"] is None
    assert not [r for r in caplog.records if "never reached" in r.getMessage()]
    assert any("first at the last step" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiothink"):
        _sft(tmp_path / "b", rows, toy_files, *rule, "eval.stop_at=0.5", *CONSTANT_LR)
    assert [r.levelno for r in caplog.records if "never reached" in r.getMessage()] == [logging.WARNING]


@pytest.mark.parametrize("overrides, message", [
    (["eval.every_steps=2", "eval.stop_metric=think/acc"], "must be <mode>/<stat>"),
    (["eval.every_steps=2", "eval.stop_metric=forced/accuracy"], "must be <mode>/<stat>"),
    (["eval.stop_metric=think/accuracy"], "needs the held-out items scored during SFT"),
    (["eval.every_steps=2", "eval.num_samples=0", "eval.stop_metric=think/accuracy"], "needs the held-out"),
    (["eval.every_steps=2", "eval.stop_metric=think/hard/accuracy"], "needs eval.forced_modes=true"),
    (["eval.every_steps=2", "eval.forced_modes=true", "eval.stop_metric=think/accuracy", "eval.stop_at=90"],
     r"eval.stop_at=90: must be a number in \[0, 1\]"),
    (["eval.every_steps=0"], "eval.every_steps=0: must be a whole number"),
    (["eval.every_steps=2", "eval.forced_modes=true", "eval.stop_metric=think/accuracy", "eval.stop_anneal_steps=-1"],
     "eval.stop_anneal_steps=-1: must be a whole number >= 0"),
    (["eval.every_steps=2", "eval.stop_anneal_steps=50"], "eval.stop_anneal_steps=50: anneals after the stop rule"),
    (["eval.every_steps=2", "eval.stop_metric=sampled_think/accuracy"], "needs eval.sampled_temperature"),
    (["eval.sampled_temperature=0"], "eval.sampled_temperature=0: must be a number > 0"),
    (["sft.target_mode=thought"], "sft.target_mode='thought': must be think, direct or null"),
    (["sft.mode_tag_loss=maybe"], "sft.mode_tag_loss='maybe': must be true or false"),
    (["eval.sampled_temperature=hot"], "eval.sampled_temperature='hot': must be a number > 0"),
])
def test_a_bad_stop_rule_is_refused_before_anything_loads(toy_files, tmp_path, overrides, message):
    from audiothink.plumbing.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        sft.check_sft_config(_cfg(tmp_path, tmp_path / "none.jsonl", toy_files, *overrides))


def test_a_stop_rule_on_a_slice_the_items_lack_is_refused(toy_files, tmp_path):
    from audiothink.plumbing.errors import ConfigError

    rows = sft_rows(toy_files, tmp_path)
    cfg = _cfg(tmp_path, rows, toy_files, "eval.every_steps=1", "eval.forced_modes=true",
               "eval.stop_metric=think/medium/accuracy")
    with pytest.raises(ConfigError, match="no slice 'medium'"):
        sft.sft(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_the_sampled_figure_is_seeded_by_step_and_leaves_trainings_random_state(toy_files, tmp_path, monkeypatch):
    """eval.sampled_temperature: one more scoring, forced to think and sampled at that temperature, drawn from a
    generator seeded by (seed, step): the same step draws the same, another step other draws, and the random
    state training goes on with is the one before the scoring (the spy consumes the generator as sampling does)."""
    from types import SimpleNamespace

    from audiothink import inference

    calls = []

    def spy(model, processor, samples, template, **kw):
        calls.append({"prefill": kw["prefill"], "do_sample": kw["do_sample"], "temperature": kw["temperature"],
                      "draw": torch.rand(1).item()})
        return ["<answer>a</answer>"] * len(samples)

    monkeypatch.setattr(inference, "generate_answers", spy)
    monkeypatch.setattr(inference, "score", lambda samples, outputs: {"n": len(outputs)})
    cfg = _cfg(tmp_path, tmp_path / "none.jsonl", toy_files, "eval.sampled_temperature=1.2", "eval.forced_modes=true")
    model = SimpleNamespace(device=torch.device("cpu"))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    figures = sft.heldout_figures(model, None, ["item"] * 3, cfg, step=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert set(figures) == {"after", "after_think", "after_direct", "after_think_sampled"}
    sampled = [c for c in calls if c["do_sample"]]
    assert [(c["prefill"], c["temperature"]) for c in sampled] == [("<think>", 1.2)]
    assert all(c["do_sample"] is False for c in calls if c is not sampled[0])
    sft.heldout_figures(model, None, ["item"] * 3, cfg, step=5)
    sft.heldout_figures(model, None, ["item"] * 3, cfg, step=6)
    draws = [c["draw"] for c in calls if c["do_sample"]]
    assert draws[0] == draws[1] != draws[2]
    # without the option: the greedy figures only, no draw
    calls.clear()
    sft.heldout_figures(model, None, ["item"], _cfg(tmp_path, tmp_path / "none.jsonl", toy_files), step=5)
    assert [c["do_sample"] for c in calls] == [False]


def test_stop_metric_reads_overall_and_slice_figures():
    slice_ = {"accuracy": 0.25, "think_rate": 0.5, "format_failure_rate": 0.0}
    figures = {"after_think": {"overall": {"accuracy": 0.75}, "by_difficulty": {"hard": slice_},
                               "by_task": {"count": {"accuracy": 0.125}}}}
    assert sft.stop_metric_value(figures, "think/accuracy") == 0.75
    assert sft.stop_metric_value(figures, "think/hard/think_rate") == 0.5
    assert sft.stop_metric_value(figures, "think/count/accuracy") == 0.125
