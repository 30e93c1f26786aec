"""python -m audiothink.export: a LoRA run merged (or a full run copied) into one loadable checkpoint with a model
card; the training log line that says LoRA or full; the filled final/README.md; the bad inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from audiothink.data import load_samples
from audiothink.export import main as export_main
from audiothink.inference import generate_batch
from tests.helpers import load_toy, run_eval

REPO = Path(__file__).resolve().parents[2]
# A learning rate high enough that two steps move the adapter's greedy answers away from the base's.
TRAIN = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=16", "trainer.learning_rate=0.02",
         "trainer.warmup_steps=0", "eval.num_samples=8", "log.plots=false"]


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _train(tmp: Path, toy_files, name: str, *args: str) -> tuple[Path, str]:
    data = [f"data.root={toy_files['train'].parent}", "data.generate_toy=false"]
    out = _cli("audiothink.train", *TRAIN, *data, *args, f"hydra.run.dir={tmp / name}", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / name, out.stdout


def _run_and_export(tmp, toy_files, model: str):
    """A two-step run of `model` on the toy and its export: (run folder, stdout, export folder)."""
    run_dir, stdout = _train(tmp, toy_files, "run", f"model={model}")
    out = _cli("audiothink.export", str(run_dir / "final"), "--out", str(tmp / "export"), cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, stdout, tmp / "export"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, toy_files):
    """A two-step LoRA run on the toy (model=toy_lora) and its export: (run folder, stdout, export folder)."""
    return _run_and_export(tmp_path_factory.mktemp("lora"), toy_files, "toy_lora")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, toy_files):
    """A two-step fully fine-tuned run (model=toy) and its export."""
    return _run_and_export(tmp_path_factory.mktemp("full"), toy_files, "toy")


def _counts(model) -> tuple[str, str]:
    params = list(model.parameters())
    return (f"{sum(p.numel() for p in params if p.requires_grad) / 1e6:.2f} M",
            f"{sum(p.numel() for p in params) / 1e6:.2f} M")


# -- the training run: log line and model card ------------------------------------------------------------


def _merged_answers_as_the_adapter(merged, adapter, processor, samples, prompt, **generation) -> None:
    """Greedy completions of the merged model equal the base + adapter's, and differ from the base alone's (so the
    adapter matters for these prompts and the equality says something)."""
    def greedy(model):
        batch = generate_batch(model, processor, samples, prompt, **generation)
        return [row[m.bool()].tolist() for row, m in zip(batch.completion_ids, batch.completion_mask)]

    with torch.no_grad():
        tuned = greedy(adapter)
        assert greedy(merged) == tuned
        with adapter.disable_adapter():
            assert greedy(adapter) != tuned


def test_training_log_line_says_lora_and_trainable_parameters(lora_run, toy_model_dir):
    from omegaconf import OmegaConf
    from peft import get_peft_model

    from audiothink.loading import build_peft_config

    _, stdout, _ = lora_run
    lines = [ln for ln in stdout.splitlines() if ln.startswith("model: ")]
    assert len(lines) == 1, stdout[-2000:]
    lora = yaml.safe_load((REPO / "configs" / "model" / "toy_lora.yaml").read_text())["lora"]
    model, _ = load_toy(toy_model_dir)
    expected = get_peft_model(model, build_peft_config(OmegaConf.create(lora)))
    trainable, total = _counts(expected)
    assert trainable != total
    # 2 decoder layers x 7 projections of the language model
    assert lines[0] == (f"model: Qwen2AudioForConditionalGeneration ({toy_model_dir}), LoRA r=8 on 14 modules: "
                        f"{trainable} trainable of {total} parameters")


@pytest.mark.slow  # a second training run (full fine-tuning)
def test_training_log_line_says_full_fine_tuning(full_run, toy_model_dir):
    _, stdout, _ = full_run
    model, _ = load_toy(toy_model_dir)
    trainable, total = _counts(model)
    assert f"model: Qwen2AudioForConditionalGeneration ({toy_model_dir}), full fine-tuning: {trainable} trainable " \
           f"of {total} parameters" in stdout.splitlines()


def _card_facts(card: str, run_dir: Path) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "[More Information Needed]" not in card  # PEFT's empty template
    assert f"base_model: {cfg['model']['path']}" in card
    for name, reward in cfg["reward"].items():
        assert f"`{name}` (weight {reward['weight']}, `{reward['fn']['_target_']}`)" in card
    assert f"**Steps:** {summary['steps']} of trainer.max_steps=2" in card
    assert f"train `{cfg['data']['train']}`, held-out `{cfg['data']['eval']}`" in card
    before, after = summary["before"]["overall"], summary["after"]["overall"]
    assert (f"| overall | {after['n']} | {100 * before['accuracy']:.1f}% | {100 * after['accuracy']:.1f}% | "
            f"{100 * before['think_rate']:.1f}% | {100 * after['think_rate']:.1f}% |") in card
    assert cfg["prompt"].strip() in card


def test_final_model_card_holds_the_run_facts(lora_run):
    run_dir, _, _ = lora_run
    card = (run_dir / "final" / "README.md").read_text()
    _card_facts(card, run_dir)
    assert "library_name: peft" in card and "LoRA r=8, alpha=16" in card


# -- the export ----------------------------------------------------------------------------------------------


def test_export_is_a_loadable_checkpoint_with_a_filled_card(lora_run, toy_model_dir):
    from safetensors import safe_open
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    run_dir, _, export = lora_run
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "chat_template.jinja",
            "processor_config.json", "tokenizer.json", "README.md", "audiothink_export.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "training_args.bin"}
    with safe_open(export / "model.safetensors", "pt") as f, safe_open(toy_model_dir / "model.safetensors", "pt") as g:
        assert set(f.keys()) == set(g.keys())  # the hub names, as the base was saved
    model = Qwen2AudioForConditionalGeneration.from_pretrained(export)
    processor = AutoProcessor.from_pretrained(export)
    assert processor.chat_template and model.generation_config.eos_token_id is not None
    card = (export / "README.md").read_text()
    _card_facts(card, run_dir)
    assert "library_name: transformers" in card and "merged" in card


def test_merged_model_answers_as_the_adapter_does(lora_run, toy_model_dir, toy_files):
    from peft import PeftModel
    from transformers import Qwen2AudioForConditionalGeneration

    run_dir, _, export = lora_run
    prompt = yaml.safe_load((run_dir / "config.yaml").read_text())["prompt"]
    samples = load_samples(toy_files["eval"]).samples[:8]
    base, processor = load_toy(toy_model_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = PeftModel.from_pretrained(base, str(run_dir / "final")).eval()
    merged = Qwen2AudioForConditionalGeneration.from_pretrained(export).eval()

    # the adapter is in the weights: every LoRA-wrapped projection changed, nothing else did
    merged_state = merged.state_dict()
    changed = {k for k, v in base_state.items() if not torch.equal(v, merged_state[k])}
    assert changed and all(re.search(r"language_model\..*_proj\.weight$", k) for k in changed), sorted(changed)[:5]

    _merged_answers_as_the_adapter(merged, adapter, processor, samples, prompt, max_new_tokens=24,
                                   max_audio_seconds=1.0)


def test_evaluate_on_the_export_equals_the_adapter(lora_run, toy_files, tmp_path):
    run_dir, _, export = lora_run
    common = ["benchmark=toy", f"benchmark.root={toy_files['eval'].parent}", "benchmark.generate_toy=false",
              "eval.batch_size=8", "eval.charts=false", "eval.limit=8", "eval.kl=false"]
    exported = run_eval(tmp_path / "export", *common, f"model.path={export}")
    with_adapter = run_eval(tmp_path / "adapter", *common, f"adapter={run_dir / 'final'}")

    def outputs(folder):
        rows = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        return {r["key"]: r["output"] for r in rows if "key" in r}

    assert exported["summary"] == with_adapter["summary"]
    assert exported["model"]["description"] == f"{export} (LoRA merged: exported from training run {run_dir.resolve()})"
    assert outputs(tmp_path / "export") == outputs(tmp_path / "adapter") and len(outputs(tmp_path / "export")) == 8


@pytest.mark.slow  # a second training run (full fine-tuning)
def test_full_run_export_is_the_trained_model(full_run):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    run_dir, _, export = full_run
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "chat_template.jinja", "README.md"} <= names
    assert "training_args.bin" not in names
    assert (export / "model.safetensors").read_bytes() == (run_dir / "final" / "model.safetensors").read_bytes()
    Qwen2AudioForConditionalGeneration.from_pretrained(export)
    AutoProcessor.from_pretrained(export)
    card = (export / "README.md").read_text()
    _card_facts(card, run_dir)
    assert "fully fine-tuned" in card and (run_dir / "final" / "README.md").read_text().startswith("---")


# -- bad inputs: one line, exit 2, nothing written ----------------------------------------------------------


def _bad_inputs(run_dir: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "loose").mkdir()
    (tmp / "loose" / "config.json").write_text("{}")
    (tmp / "full_out").mkdir()
    (tmp / "full_out" / "x").write_text("")
    (run_dir / "empty").mkdir(exist_ok=True)
    moved = tmp / "moved"
    moved.mkdir()
    shutil.copy(run_dir / "config.yaml", moved / "config.yaml")
    shutil.copytree(run_dir / "final", moved / "final")
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["model"]["path"] = str(tmp / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = str(tmp / "out")
    return {
        "missing": ([str(tmp / "nope"), "--out", out], "no such folder"),
        "run folder itself": ([str(run_dir), "--out", out], f"did you mean {run_dir / 'final'}?"),
        "not in a run": ([str(tmp / "loose"), "--out", out], "not a training run's weights folder"),
        "no weights": ([str(run_dir / "empty"), "--out", out], "nothing to export"),
        "out not empty": ([str(run_dir / "final"), "--out", str(tmp / "full_out")], "exists and is not empty"),
        "base gone": ([str(moved / "final"), "--out", out], "pass --base"),
    }


def test_bad_inputs_are_one_line_and_exit_2(lora_run, tmp_path, capsys):
    run_dir, _, _ = lora_run
    for case, (argv, words) in _bad_inputs(run_dir, tmp_path).items():
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, case
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, (case, err)
        assert not (tmp_path / "out").exists(), case
    assert [p.name for p in (tmp_path / "full_out").iterdir()] == ["x"]  # left as it was


def test_bad_input_on_the_command_line(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    out = _cli("audiothink.export", str(run_dir), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "out").exists()


def test_omni_thinker_lora_export_with_its_processor(omni_dir, toy_files, tmp_path):
    """Qwen2.5-Omni's thinker (model.cls) and audio-only processor (model.processor) from the run's config: the
    merged thinker loads alone and answers as base + adapter."""
    from omegaconf import OmegaConf
    from peft import PeftModel, get_peft_model

    from audiothink.models import OmniAudioProcessor
    from audiothink.loading import build_peft_config, load_model_and_processor

    section = yaml.safe_load((REPO / "configs" / "model" / "qwen2_5_omni_7b.yaml").read_text())["model"]
    section.update(path=str(omni_dir), dtype="float32")
    model_cfg = OmegaConf.create(section)
    model, processor = load_model_and_processor(model_cfg)
    peft = get_peft_model(model, build_peft_config(model_cfg.lora))
    g = torch.Generator().manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B = 0 (the init) would make the adapter a no-op
            p.data = torch.randn(p.shape, generator=g) * 0.3
    run = tmp_path / "run"
    peft.save_pretrained(run / "final")
    processor.save_pretrained(run / "final")
    prompt = "{question}\n{choices}\nAnswer inside <answer></answer>."
    (run / "config.yaml").write_text(yaml.safe_dump({"model": section, "prompt": prompt}))
    export_main([str(run / "final"), "--out", str(tmp_path / "export")])

    cls = type(model)
    merged = cls.from_pretrained(tmp_path / "export").eval()
    assert isinstance(OmniAudioProcessor.from_pretrained(tmp_path / "export"), OmniAudioProcessor)
    assert "from audiothink.models import OmniAudioProcessor" in (tmp_path / "export" / "README.md").read_text()
    base, _ = load_model_and_processor(model_cfg)
    adapter = PeftModel.from_pretrained(base, str(run / "final")).eval()
    samples = load_samples(toy_files["eval"]).samples[:6]

    _merged_answers_as_the_adapter(merged, adapter, processor, samples, prompt, max_new_tokens=16,
                                   max_audio_seconds=2.0)


def test_checkpoint_export_leaves_the_training_state_and_says_which_weights(lora_run, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    run_dir, _, _ = lora_run
    checkpoint = run_dir / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file()
    export_main([str(checkpoint), "--out", str(tmp_path / "export")])
    names = {p.name for p in (tmp_path / "export").iterdir()}
    assert "model.safetensors" in names and not names & {"optimizer.pt", "scheduler.pt", "trainer_state.json"}
    Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "The figures of the run's final weights (step 2); these weights are `checkpoint-2` (step 2)." in card


def test_model_card_of_a_formula_reward(tmp_path):
    """reward=full holds its formula as a string beside the reward entries: the card names it (a run with it
    crashed at the end writing final/README.md)."""
    from omegaconf import OmegaConf

    from audiothink.export import model_card

    OmegaConf.save(OmegaConf.create({
        "model": {"path": "/m", "cls": "x.Y"}, "data": {}, "trainer": {}, "seed": 0,
        "reward": {"formula": "a * (1 + b)", "a": {"weight": 0.0, "fn": {"_target_": "audiothink.rewards.A"}},
                   "b": {"weight": 0.0, "fn": {"_target_": "audiothink.rewards.B"}}}}), tmp_path / "config.yaml")
    card = model_card(tmp_path, kind="full", base="/m")
    assert "`a` (weight 0.0, `audiothink.rewards.A`)" in card and "total = `a * (1 + b)`" in card
