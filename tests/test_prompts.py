"""audiothink/prompts.py: training rolls out from the ids evaluation generates from; chat_template_kwargs reach
both; TRL arguments that would bypass the audio path are refused.

The ids are caught where each side hands them to the model: ``model.generate`` (a recorder that stops the call),
reached through AudioGRPOTrainer's real path (``_generate_and_score_completions`` -> TRL's ``_generate`` ->
``_tokenize_prompts`` -> TRL's padding -> generate) and through evaluation's (``inference.generate_batch``).
"""

from __future__ import annotations

import pytest
import torch

from audiothink.data import load_samples, to_dataset
from audiothink.formats import force_prefill
from audiothink.inference import generate_batch
from audiothink.plumbing.errors import ConfigError
from audiothink.prompts import BYPASSES_AUDIO_PATH, AudioPrompt, audio_token_ids
from audiothink.rewards import Format
from audiothink.toy.model import CHAT_TEMPLATE
from audiothink.trainer import AudioGRPOTrainer
from tests.helpers import PROMPT, load_toy, toy_grpo_args

# the toy's template with a variable of its own: the system line, when the caller sets it
SYSTEM_TEMPLATE = CHAT_TEMPLATE.replace("You listen carefully.", "{{ system_text | default('You listen carefully.') }}")
assert SYSTEM_TEMPLATE != CHAT_TEMPLATE


class Captured(Exception):
    pass


class GenerateRecorder:
    """Stands in for ``model.generate``: records each row's ids (padding removed) and the audio tensors, then
    stops the caller (what follows generation is not under test)."""

    def __init__(self):
        self.ids: list[list[int]] = []
        self.audio: dict[str, torch.Tensor] = {}

    def __call__(self, input_ids=None, attention_mask=None, **kwargs):
        self.ids = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        self.audio = {k: kwargs[k].detach().clone() for k in ("input_features", "feature_attention_mask")}
        raise Captured


def _samples(toy_files):
    """One one-clip and one four-clip item."""
    samples = load_samples(toy_files["train"]).samples
    one = next(s for s in samples if len(s.audio) == 1)
    four = next(s for s in samples if len(s.audio) == 4)
    return [one, four]


def _trainer_ids(toy_model_dir, tmp_path, samples, *, prefill="", processor_template=None, **args):
    """What AudioGRPOTrainer's rollout generates from, for each of ``samples`` (one row each)."""
    model, processor = load_toy(toy_model_dir)
    if processor_template is not None:
        processor.chat_template = processor_template
    trainer = AudioGRPOTrainer(
        model=model, processor=processor, reward_funcs=[Format()],
        args=toy_grpo_args(tmp_path, num_generations=2, per_device_train_batch_size=2, **args),
        train_dataset=to_dataset(samples, PROMPT), max_audio_seconds=2.0, prefill=prefill,
    )
    recorder = GenerateRecorder()
    trainer.model.generate = recorder
    rows = [trainer.train_dataset[i] for i in range(len(samples))]
    with pytest.raises(Captured):
        trainer._generate_and_score_completions(rows)
    return recorder, processor


def _eval_ids(toy_model_dir, samples, *, prefill="", processor_template=None, chat_template_kwargs=None):
    """What evaluation (benchmarks, held-out summary) generates from, for ``samples``."""
    model, processor = load_toy(toy_model_dir)
    if processor_template is not None:
        processor.chat_template = processor_template
    recorder = GenerateRecorder()
    model.generate = recorder
    with pytest.raises(Captured):
        generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=8, max_audio_seconds=2.0,
                       prefill=prefill, chat_template_kwargs=chat_template_kwargs)
    return recorder


def _collapsed(ids, audio_id):
    """Each run of ``<|AUDIO|>`` as one (what vLLM is sent)."""
    return [t for i, t in enumerate(ids) if not (t == audio_id and i and ids[i - 1] == audio_id)]


@pytest.mark.parametrize("mode", [None, "think", "direct"])
def test_training_rolls_out_from_the_ids_evaluation_generates_from(toy_model_dir, toy_files, tmp_path, mode):
    """One clip and four clips, free choice and each forced mode: the same ids and the same audio features."""
    samples = _samples(toy_files)
    train, processor = _trainer_ids(toy_model_dir, tmp_path, samples, prefill=force_prefill(mode))
    evaluation = _eval_ids(toy_model_dir, samples, prefill=force_prefill(mode))
    assert len(train.ids) == 2 and train.ids == evaluation.ids
    for k in ("input_features", "feature_attention_mask"):
        assert torch.equal(train.audio[k], evaluation.audio[k]), k
    audio_id, _, _ = audio_token_ids(processor)
    for ids, s in zip(train.ids, samples, strict=True):
        # one run of audio tokens a clip; the prompt ends with the forced tag (or the assistant header)
        assert sum(t == audio_id and (i == 0 or ids[i - 1] != audio_id) for i, t in enumerate(ids)) == len(s.audio)
        if mode:
            assert ids[-1] == processor.tokenizer.convert_tokens_to_ids(force_prefill(mode))
    # the builder's unexpanded ids (vLLM's rows) are the same prompt, one placeholder a clip
    builder = AudioPrompt(processor, prefill=force_prefill(mode))
    texts = [r["prompt"] for r in to_dataset(samples, PROMPT)]
    assert builder.ids(texts, [len(s.audio) for s in samples]) == [_collapsed(i, audio_id) for i in train.ids]
    # the row checks hold to the limit the prompt the rollout generates from, prefill included
    assert _row_lengths(processor, samples, prefill=force_prefill(mode)) == [len(i) for i in train.ids]


def _row_lengths(processor, samples, **builder):
    """The prompt length the row checks count for each of ``samples`` (their clips cut to the toy's 2 s)."""
    from audiothink.audio import audio_info
    from audiothink.prompts import row_checks

    checks = row_checks(processor, PROMPT, max_prompt_tokens=2048, max_audio_seconds=2.0, **builder)
    return [checks.prompt_tokens(s, [audio_info(a)[0] for a in s.audio]) for s in samples]


def test_chat_template_kwargs_change_the_prompt_in_training_and_evaluation(toy_model_dir, toy_files, tmp_path):
    """GRPOConfig.chat_template_kwargs (trainer.chat_template_kwargs) reach the rollouts' prompt, and evaluation
    given the same kwargs asks the same thing."""
    samples = _samples(toy_files)
    kwargs = {"system_text": "Listen twice."}
    plain, _ = _trainer_ids(toy_model_dir, tmp_path / "plain", samples, processor_template=SYSTEM_TEMPLATE)
    train, processor = _trainer_ids(toy_model_dir, tmp_path / "kw", samples, processor_template=SYSTEM_TEMPLATE,
                                    chat_template_kwargs=kwargs)
    evaluation = _eval_ids(toy_model_dir, samples, processor_template=SYSTEM_TEMPLATE, chat_template_kwargs=kwargs)
    assert train.ids != plain.ids
    assert train.ids == evaluation.ids
    text = processor.tokenizer.decode(train.ids[0])
    assert "Listen twice." in text and "You listen carefully." not in text
    assert _row_lengths(processor, samples, chat_template_kwargs=kwargs) == [len(i) for i in train.ids]
    # without kwargs the variable's default: the toy's own prompt, unchanged
    assert plain.ids == _eval_ids(toy_model_dir, samples).ids


def test_chat_template_kwargs_that_would_not_change_the_prompt_are_refused(toy_model_dir):
    _, processor = load_toy(toy_model_dir)
    with pytest.raises(ConfigError, match=r"\['system_text'\] are not variables of the model's chat template"):
        AudioPrompt(processor, chat_template_kwargs={"system_text": "x"})  # the toy's template reads no variable
    with pytest.raises(ConfigError, match=r"\['add_generation_prompt'\] are set by the audio prompt itself"):
        AudioPrompt(processor, chat_template_kwargs={"add_generation_prompt": False})


def test_evaluate_renders_with_trainer_chat_template_kwargs(toy_model_dir, toy_files, tmp_path, monkeypatch):
    """`python -m audiothink.evaluate trainer.chat_template_kwargs={...}`: every prompt rendered with them, and the
    predictions' header records them (a folder predicted with other ones is not reused)."""
    import json
    import shutil

    from tests.helpers import run_eval

    model_dir = tmp_path / "model"
    shutil.copytree(toy_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(SYSTEM_TEMPLATE)
    rendered = []
    render = AudioPrompt.render
    monkeypatch.setattr(AudioPrompt, "render", lambda self, *a: rendered.extend(render(self, *a)) or render(self, *a))
    out = tmp_path / "out"
    run_eval(out, "benchmark=toy", f"benchmark.root={toy_files['eval'].parent}", "benchmark.generate_toy=false",
             f"model.path={model_dir}", "eval.limit=4", "eval.max_new_tokens=4", "eval.charts=false",
             "trainer.chat_template_kwargs={system_text: Listen twice.}")
    assert len(rendered) == 4 and all("system\nListen twice.<|im_end|>" in t for t in rendered)
    header = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["_header"]
    assert header["chat_template_kwargs"] == {"system_text": "Listen twice."}


@pytest.mark.parametrize("name", sorted(BYPASSES_AUDIO_PATH))
def test_trainer_refuses_arguments_that_bypass_the_audio_path(toy_model_dir, toy_files, tmp_path, name):
    model, processor = load_toy(toy_model_dir)
    with pytest.raises(ValueError, match=rf"AudioGRPOTrainer\({name}=\.\.\.\): .*audiothink does not support"):
        AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()], args=toy_grpo_args(tmp_path),
                         train_dataset=to_dataset(_samples(toy_files), PROMPT), **{name: [len]})


@pytest.mark.parametrize("name", sorted(BYPASSES_AUDIO_PATH))
def test_config_refuses_fields_that_bypass_the_audio_path(name):
    """A composed config (a config file, the Python API) with trainer.<name>: one line with the reason."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from audiothink import CONFIG_DIR
    from audiothink.plumbing.validate import check_train_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.run.dir=/tmp/unused"])
    OmegaConf.set_struct(cfg, False)
    cfg.trainer[name] = "my_module.fn"
    with pytest.raises(ConfigError, match=rf"^trainer\.{name}: .*audiothink does not support"):
        check_train_config(cfg)


@pytest.mark.parametrize("override", ["+trainer.tools=[my_module.search]", "trainer.rollout_func=my_module.roll"])
def test_the_command_line_refuses_them_before_anything_loads(tmp_path, override):
    from tests.plumbing.test_console import _cli

    out = _cli("audiothink.train", [override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "audiothink does not support" in lines[0], out.stderr
    assert not (tmp_path / "run").exists()
