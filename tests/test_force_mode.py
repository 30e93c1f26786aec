"""Forced mode: `eval.force_mode=think|direct|both` prefills the reply with `<think>` or `<answer>`; the
completion, prefill included, is parsed and scored like any other, and the report puts each forced mode's
accuracy per slice next to the free choice. The same prefill drives training's `force_mode` (the ablation's
"always think" and "direct answer" rows)."""

from __future__ import annotations

import json

import pytest
import torch

from audiothink.scoring import string_match
from audiothink.data import load_samples
from audiothink.formats import ANSWER_OPEN, THINK_OPEN, extract_answer, force_prefill, parse
from audiothink.inference import generate_batch
from tests.helpers import PROMPT, load_toy, run_eval


class ScriptedGenerate:
    """Replaces model.generate: records the prompt ids it is called with and continues every row with the
    tokens of `continuation(row)` (then end-of-sequence), so the scoring of a known completion is checked."""

    def __init__(self, model, tokenizer, continuation):
        self.model, self.tok, self.continuation = model, tokenizer, continuation
        self.prompts: list[list[int]] = []
        self.calls = 0

    def __call__(self, input_ids=None, attention_mask=None, **kwargs):
        self.calls += 1
        rows = []
        for i in range(input_ids.size(0)):
            ids = input_ids[i][attention_mask[i].bool()].tolist()
            self.prompts.append(ids)
            text = self.continuation(len(self.prompts) - 1)
            rows.append(self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id])
        width = max(map(len, rows))
        new = torch.full((len(rows), width), self.tok.pad_token_id)
        for i, r in enumerate(rows):
            new[i, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, new], dim=1)


def test_force_prefill_names():
    assert force_prefill("think") == THINK_OPEN and force_prefill("direct") == ANSWER_OPEN
    assert force_prefill(None) == ""
    with pytest.raises(ValueError, match="force_mode"):
        force_prefill("sometimes")


@pytest.mark.parametrize("mode", ["think", "direct"])
def test_prefill_ends_the_prompt_and_starts_the_completion(toy_model_dir, toy_files, mode, monkeypatch):
    model, processor = load_toy(toy_model_dir)
    tok = processor.tokenizer
    samples = load_samples(toy_files["eval"]).samples[:4]
    tail = {"think": "i hear it</think><answer>{}</answer>", "direct": "{}</answer>"}[mode]
    fake = ScriptedGenerate(model, tok, lambda i: tail.format(samples[i % 4].answer))
    monkeypatch.setattr(model, "generate", fake)

    plain = generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=16)
    batch = generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=16, prefill=force_prefill(mode))
    tag_id = tok.convert_tokens_to_ids(force_prefill(mode))
    free_prompts, forced_prompts = fake.prompts[:4], fake.prompts[4:]
    for free, forced in zip(free_prompts, forced_prompts, strict=True):
        # the forced prompt is the free prompt (ending with the assistant header) plus the one tag token
        assert forced == free + [tag_id]
    for s, text, free_text in zip(samples, batch.texts, plain.texts, strict=True):
        assert text == force_prefill(mode) + free_text  # the prefill is part of the completion
        p = parse(text)
        assert p.well_formed and p.thinks == (mode == "think")
        assert string_match(s.answer, extract_answer(text), s.choices)
    # the prefill is part of the completion, so its one token counts as an output token
    assert plain.output_lengths == plain.completion_mask.sum(1).tolist()
    assert batch.output_lengths == [n + 1 for n in batch.completion_mask.sum(1).tolist()]


def test_evaluate_reports_each_forced_mode_next_to_the_free_choice(tmp_path, toy_files, capsys):
    root = toy_files["eval"].parent
    r = run_eval(tmp_path / "out", "benchmark=toy", f"benchmark.root={root}", "benchmark.generate_toy=false",
                 "eval.force_mode=both", "eval.charts=false")
    printed = capsys.readouterr().out
    fm = r["forced_modes"]
    assert fm["modes"] == ["think", "direct"] and fm["n"] == 16
    assert set(fm["by"]) >= {"task", "difficulty"}
    assert fm["free"] == r["summary"]["overall"]["accuracy"]
    rows = {}
    for mode in ("think", "direct"):
        lines = (tmp_path / "out" / f"predictions_force_{mode}.jsonl").read_text().splitlines()
        header, recs = json.loads(lines[0])["_header"], [json.loads(x) for x in lines[1:]]
        assert header["force_mode"] == mode
        assert all(rec["output"].startswith(force_prefill(mode)) for rec in recs)
        rows[mode] = {rec["id"]: rec for rec in recs}
    # scored like any other completion: the official rule on the extracted answer, per item
    samples = {s.id: s for s in load_samples(toy_files["eval"]).samples}
    for mode in ("think", "direct"):
        want = sum(string_match(samples[i].answer, extract_answer(rec["output"]), samples[i].choices)
                   for i, rec in rows[mode].items()) / len(samples)
        assert fm[mode] == pytest.approx(want)
        per_diff = fm["by"]["difficulty"]
        n = sum(b["n"] for b in per_diff.values())
        assert n == 16 and sum(b[mode] * b["n"] for b in per_diff.values()) / n == pytest.approx(want)
    assert all(rec["mode"] == "think" for rec in rows["think"].values() if rec["mode"] != "malformed")
    assert all(not rec["thinks"] for rec in rows["direct"].values())
    assert "forced think" in printed and "forced direct" in printed and "free choice" in printed
    assert "## Forced mode" in (tmp_path / "out" / "report.md").read_text()


def test_bad_force_mode_is_a_config_error(tmp_path, toy_files):
    from audiothink.plumbing.errors import ConfigError

    with pytest.raises(ConfigError, match="force_mode"):
        run_eval(tmp_path / "out", "benchmark=toy", f"benchmark.root={toy_files['eval'].parent}",
                 "benchmark.generate_toy=false", "eval.force_mode=always")


def test_training_rollouts_start_with_the_forced_tag_and_are_scored_whole(tmp_path, toy_files):
    """`force_mode=think` in training: every rollout's reply starts with <think>, the rewards read the prefill
    (a thought-out completion is well formed), and the held-out scoring is forced the same way."""
    from tests.plumbing.test_console import _cli

    run_dir = tmp_path / "run"
    out = _cli("audiothink.train", [
        "force_mode=think", "trainer.max_steps=1", "trainer.per_device_train_batch_size=16",
        "trainer.logging_steps=1", "trainer.save_steps=1", "eval.num_samples=8", "log.completion_prompts=2",
        "log.plots=false", "data.generate_toy=false", f"data.train={toy_files['train']}",
        f"data.eval={toy_files['eval']}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    completions = [c for r in records for c in r["completions"]]
    assert len(completions) == 16
    assert all(c["text"].startswith(THINK_OPEN) for c in completions)
    for c in completions:  # the format reward saw the whole reply: prefill + the model's continuation
        assert c["rewards"]["format"] == (1.0 if parse(c["text"]).mode == "think" else 0.0), c
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["think/rate"] >= 0.9
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["before"]["overall"]["think_rate"] >= 0.9
