"""Base + adapter evaluation and the forgetting monitor (mean per-token KL(tuned ‖ base))."""

from __future__ import annotations

import json

import pytest

from audiothink.benchmarks.runner import completion_kl, teacher_forced_logprobs
from audiothink.data import load_samples
from audiothink.inference import generate_batch
from tests.helpers import load_toy, run_eval, toy_lora_adapter


@pytest.fixture(scope="module")
def adapters(toy_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"noop": toy_lora_adapter(toy_model_dir, root / "noop", 0.0),
            "moved": toy_lora_adapter(toy_model_dir, root / "moved", 0.3)}


def _args(toy_files):
    return ["benchmark=toy", f"benchmark.root={toy_files['eval'].parent}", "benchmark.generate_toy=false",
            "eval.batch_size=8", "eval.charts=false"]


def test_adapter_evaluation_reports_kl(tmp_path, toy_files, adapters):
    base = run_eval(tmp_path / "base", *_args(toy_files))
    noop = run_eval(tmp_path / "noop", *_args(toy_files), f"adapter={adapters['noop']}")
    moved = run_eval(tmp_path / "moved", *_args(toy_files), f"adapter={adapters['moved']}")
    assert base["forgetting"] is None
    assert noop["summary"] == base["summary"]  # a no-op adapter answers like the base
    assert noop["forgetting"]["kl_per_token"] == pytest.approx(0.0, abs=1e-7)
    fg = moved["forgetting"]
    assert fg["kl_per_token"] > 1e-4 and fg["tokens"] > 0 and fg["items"] == 16
    assert set(fg["by"]) == {"task", "difficulty", "category"}
    assert "teacher-forced on the tuned model's own greedy completions" in fg["method"]
    assert "Forgetting monitor" in (tmp_path / "moved" / "report.md").read_text()
    header = json.loads((tmp_path / "moved" / "predictions.jsonl").read_text().splitlines()[0])["_header"]
    assert header["adapter"] == str(adapters["moved"])


def test_teacher_forcing_reproduces_greedy_decoding(toy_model_dir, toy_files, adapters):
    """Same positions and masks as generate(): the argmax of the teacher-forced pass is the decoded token,
    also in a left-padded batch with multi-clip items."""
    from peft import PeftModel

    model, processor = load_toy(toy_model_dir)
    model = PeftModel.from_pretrained(model, str(adapters["moved"])).eval()
    samples = load_samples(toy_files["eval"]).samples[:8]
    assert any(len(s.audio) > 1 for s in samples)
    batch = generate_batch(model, processor, samples, "{question}\n{choices}\nAnswer inside <answer></answer>.",
                           max_new_tokens=12)
    clips = [len(s.audio) for s in samples]
    logp, mask = teacher_forced_logprobs(model, batch, clips, 0, len(samples))
    agree = (logp.argmax(-1) == batch.completion_ids)[mask.bool()]
    assert agree.float().mean().item() == 1.0
    kls = completion_kl(model, batch, clips, micro_batch=3)  # micro-batches split the clips correctly
    whole = completion_kl(model, batch, clips, micro_batch=8)
    assert [n for _, n in kls] == mask.sum(1).tolist()
    assert [k for k, _ in kls] == pytest.approx([k for k, _ in whole], rel=1e-4, abs=1e-7)


def test_missing_adapter_is_a_config_error(tmp_path, toy_files):
    from audiothink.plumbing.errors import ConfigError

    with pytest.raises(ConfigError, match="no adapter_config.json"):
        run_eval(tmp_path / "x", *_args(toy_files), f"adapter={tmp_path / 'nope'}")
