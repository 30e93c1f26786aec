"""A bad config value stops in the first seconds, before data or model load, with one line and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.cli import register_resolvers
from audiothink.plumbing.validate import check_dataset_size, check_train_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
register_resolvers()


def _compose(overrides=(), name="train"):
    from audiothink.evaluate import register_eval_resolvers

    register_eval_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides))


# (override, a fragment of the message); each was accepted, or failed late, before
BAD = [
    ("trainer.learning_rate=-1e-4", "trainer.learning_rate=-0.0001: must be > 0"),
    ("trainer.learning_rate=0", "trainer.learning_rate=0: must be > 0"),
    ("trainer.beta=-0.04", "trainer.beta=-0.04: the KL weight must be >= 0"),
    ("trainer.max_completion_length=0", "trainer.max_completion_length=0: must be a whole number >= 1"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size=0: must be a whole number >= 1"),
    ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps=0: must be a whole number >= 1"),
    ("trainer.num_iterations=0", "trainer.num_iterations=0: must be a whole number >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1"),
    ("trainer.temperature=0", "trainer.temperature=0: must be > 0"),
    ("trainer.temperature=-1.0", "trainer.temperature=-1.0: must be > 0"),
    ("trainer.loss_type=ppo", "trainer.loss_type='ppo': must be one of grpo, dr_grpo, dapo"),
    ("trainer.num_generations=6", "trainer.num_generations=6 does not divide the generation batch of 128"),
    ("trainer.num_generations=1", "GRPO needs at least 2 completions"),
    ("model.max_audio_seconds=0", "model.max_audio_seconds=0: must be > 0"),
    ("model.max_audio_seconds=-2", "model.max_audio_seconds=-2: must be > 0"),
    ("model.freeze_audio_encoder=yes", "model.freeze_audio_encoder='yes': must be true or false"),
    ("rollout.compile_cache_dir=3", "rollout.compile_cache_dir=3: must be a folder path"),
    ("rollout.compile_cache_dir=''", "rollout.compile_cache_dir='': must be a folder path"),
    ("rollout.compile_cache_dir=/tmp/compiled", None),
    ("eval.batch_size=0", "eval.batch_size=0: must be a whole number >= 1"),
    ("eval.num_samples=-5", "eval.num_samples=-5: must be a whole number >= 0"),
    ("trainer.num_iterations=2 trainer.save_steps=25", "trainer.save_steps=25: must be a multiple of 2"),
    ("cpu_threads=0", "cpu_threads=0: must be a whole number >= 1"),
    ("force_mode=always", "force_mode='always': must be null (the model chooses), think or direct"),
    ("reward.adaptive_think.weight=0", None),  # with format at 0.5: still fine
    # a value of the wrong type is said as a type error, before any range (every int/float/bool field of TRL's
    # GRPOConfig, not only the ones checked by hand below)
    ("trainer.max_steps=abc", "trainer.max_steps='abc': must be a whole number"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: must be a whole number"),
    ("trainer.learning_rate=abc", "trainer.learning_rate='abc': must be a number"),
    ("trainer.save_steps=abc", "trainer.save_steps='abc': must be a number"),
    ("trainer.warmup_steps=abc", "trainer.warmup_steps='abc': must be a number"),
    ("trainer.num_generations=4.0", "trainer.num_generations=4.0: must be a whole number"),
    ("trainer.bf16=yes", "trainer.bf16='yes': must be true or false"),
    ("+trainer.max_grad_norm=big", "trainer.max_grad_norm='big': must be a number"),
    ("model.max_audio_seconds=abc", "model.max_audio_seconds='abc': must be a number"),
    ("seed=abc", "seed='abc': must be a whole number"),
    ("reward.format.weight=abc", "reward.format.weight='abc': must be a number"),
    # TRL's own lists of accepted values
    ("trainer.importance_sampling_level=sequense",
     "trainer.importance_sampling_level='sequense': must be one of token, sequence (token: GRPO, sequence: GSPO) "
     "(did you mean sequence?)"),
    ("trainer.importance_sampling_level=sequence", None),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0: must be a whole number >= 1"),
    # a checkpoint must end a logging window, or a resume logs other metrics than an uninterrupted run
    ("trainer.save_steps=7", "trainer.save_steps=7: must be a multiple of trainer.logging_steps=10"),
    ("trainer.logging_steps=5 trainer.save_steps=15", None),
    ("trainer.save_steps=0.5", None),  # a fraction of the run: TrainingArguments' other form, not checked
    ("+trainer.save_strategy=no trainer.save_steps=7", None),
    # a reward that cannot be built: its _target_, its arguments, a missing judge value
    ("reward.accuracy.fn._target_=audiothink.rewards.Acuracy",
     "reward.accuracy.fn._target_=audiothink.rewards.Acuracy: audiothink.rewards has no 'Acuracy' (did you mean audiothink.rewards.Accuracy?)"),
    ("reward.accuracy.fn._target_=reward.Accuracy",
     "reward.accuracy.fn._target_=reward.Accuracy: no module named 'reward' on the Python path (did you mean "
     "audiothink.rewards.Accuracy?)"),
    # the repository's rewards/ folder is importable as `rewards` in a checkout, but ships as audiothink.rewards only
    ("reward.format.fn._target_=rewards.Format",
     "reward.format.fn._target_=rewards.Format: the repository's rewards/ folder is the package audiothink.rewards "
     "(did you mean audiothink.rewards.Format?)"),
    ("reward.adaptive_think.fn._target_=audiothink.rewards.adaptive_think.AdaptiveThinc",
     "audiothink.rewards.adaptive_think has no 'AdaptiveThinc' (did you mean audiothink.rewards.adaptive_think.AdaptiveThink?)"),
    ("+reward.adaptive_think.fn.balanse=true",
     "reward.adaptive_think.fn.balanse: audiothink.rewards.AdaptiveThink takes no argument 'balanse' (did you mean balance?)"),
    ("reward=full judge._target_=audiothink.judge.RuleJudg",
     "reward.consistency.fn.judge._target_=audiothink.judge.RuleJudg: audiothink.judge has no 'RuleJudg' (did you "
     "mean audiothink.judge.RuleJudge?)"),
    ("reward=full judge=hf", "reward.consistency: Missing mandatory value: judge.path (set it on the command line)"),
    ("+reward.brevity.weight=1 +reward.brevity.fn._target_=audiothink.rewards.format.Format", None),
    ("log.completion_prompts=two", "log.completion_prompts='two': must be a whole number"),
    ("log.plots=yes", "log.plots='yes': must be true or false"),
    ("rollout.fast=1", "rollout.fast=1: must be true or false"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_each_bad_value_is_a_config_error(override, message):
    cfg = _compose(override.split())
    if message is None:
        check_train_config(cfg)
        return
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_choices_are_trls_own():
    """loss_type and importance_sampling_level are checked against the values the installed TRL's loss code
    branches on, read from TRL (not a copy here)."""
    import inspect

    from trl.trainer import grpo_trainer

    from audiothink.plumbing.validate import grpo_choices

    source = inspect.getsource(grpo_trainer)
    levels = set(re.findall(r'importance_sampling_level == "(\w+)"', source))
    assert levels and set(grpo_choices("importance_sampling_level")) == levels
    losses = set(re.findall(r'loss_type == "(\w+)"', source)) | set(re.findall(r'loss_type in \[([^\]]+)\]', source))
    losses = {w for item in losses for w in re.findall(r"\w+", item)}
    assert set(grpo_choices("loss_type")) == losses


def test_a_written_list_of_loss_types_is_trls_whole_list():
    """Where the configs or the README list loss types, the list is the installed TRL's (or says it goes on with
    "..."): a hand copy drifts when TRL adds one (the trainer configs' comments lacked vespo)."""
    from audiothink.plumbing.validate import grpo_choices

    trl = grpo_choices("loss_type")
    for path in [*sorted(CONFIGS.rglob("*.yaml")), REPO / "README.md"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # a list: three or more names joined by | or , ("grpo | dr_grpo | dapo", "grpo, dr_grpo, dapo, ...")
            for found in re.finditer(r"\b\w+(?:\s*[|,]\s*\w+){2,}\b(?P<more>\s*[|,]\s*\.\.\.)?", line):
                named = re.split(r"\s*[|,]\s*", found.group(0).split("...")[0].strip(" ,|"))
                if not set(named) <= set(trl):
                    continue
                partial = found.group("more") is not None and named == list(trl[:len(named)])
                assert named == list(trl) or partial, f"{path.relative_to(REPO)}:{number}: {named} is not TRL's {trl}"


def test_a_loss_type_trl_does_not_have_stops_the_command_line(tmp_path):
    from audiothink.plumbing.validate import grpo_choices

    out, seconds = _cli("audiothink.train", ["trainer.loss_type=dapoo", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: trainer.loss_type='dapoo': must be one of {', '.join(grpo_choices('loss_type'))} (did you mean dapo?)"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_defaults_pass():
    check_train_config(_compose())
    for model in ("qwen2_audio_7b", "qwen2_5_omni_7b", "qwen3_omni_30b_a3b", "qwen3_omni_tiny"):
        check_train_config(_compose([f"model={model}"]))


def test_every_weight_zero_is_a_dead_run():
    with pytest.raises(ConfigError, match=r"every weight is 0 \(adaptive_think, format, accuracy\)"):
        check_train_config(_compose(["reward.adaptive_think.weight=0", "reward.format.weight=0"]))
    check_train_config(_compose(["reward=full"]))  # weights 0, but the formula is the reward


def test_a_data_set_smaller_than_one_step():
    cfg = _compose()
    check_dataset_size(16, cfg.trainer)  # 128 completions / G 8 = 16 prompts
    with pytest.raises(ConfigError, match="has 15 usable row\\(s\\), fewer than the 16 prompts of one step"):
        check_dataset_size(15, cfg.trainer)


def _cli(module, args, tmp_path, python_flags=()):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0 = time.time()
    out = subprocess.run([sys.executable, *python_flags, "-m", module, *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    return out, time.time() - t0


@pytest.mark.e2e
@pytest.mark.parametrize("override", ["trainer.beta=-0.04", "trainer.num_generations=6"])
def test_train_cli_stops_at_once_with_one_line_and_exit_2(override, tmp_path):
    out, seconds = _cli("audiothink.train", [override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer."), lines
    assert "data:" not in out.stderr + out.stdout and "model:" not in out.stderr + out.stdout  # nothing loaded
    assert not (tmp_path / "cache").exists()  # not even the toy data set was built
    assert not (tmp_path / "run").exists()  # and no stub run folder is left behind
    assert seconds < 60


@pytest.mark.e2e
@pytest.mark.parametrize("module, override", [("audiothink.train", "trainer.beta=-0.04"),
                                              ("audiothink.train", "trainer.nope=1"),
                                              ("audiothink.train", "resume=true"),  # no checkpoint to resume
                                              ("audiothink.evaluate", "eval.force_mode=always"),
                                              ("audiothink.sft", "sft.max_steps=-1")])
def test_a_config_error_stops_before_the_trainer_is_imported(module, override, tmp_path):
    """A bad value (or a resume with nothing to resume) costs the config check's imports, not the trainer's: TRL's
    GRPO trainer, PEFT's models, vLLM where installed (~10 s more on 2 cores before this was so). A bad training or
    evaluation value imports neither TRL, transformers nor torch: the trainer.* checks read the pinned TRL's
    GRPOConfig facts from their snapshot (audiothink/plumbing/grpo_fields.py; TRL's import was ~6 s of the ~7 s it
    took)."""
    out, _ = _cli(module, [override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, python_flags=["-X", "importtime"])
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "omegaconf" in imported  # the flag worked: the imports are listed
    heavy = {"audiothink.trainer", "audiothink.reward_api", "trl.trainer.grpo_trainer", "vllm", "datasets"}
    if module == "audiothink.evaluate" or (module == "audiothink.train" and override != "resume=true"):
        heavy |= {"trl", "transformers", "torch"}
    assert not heavy & imported, sorted(heavy & imported)


@pytest.mark.e2e
def test_train_cli_stops_on_a_data_set_too_small_for_one_step(tmp_path, toy_files):
    rows = toy_files["train"].read_text().splitlines()[:3]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(rows).replace('"audio/', f'"{toy_files["train"].parent}/audio/') + "\n")
    out, _ = _cli("audiothink.train", ["data=jsonl", f"data.train={small}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert out.returncode == 2
    assert "the training set has 3 usable row(s), fewer than the 16 prompts of one step" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing trained: the new folder is removed again


@pytest.mark.e2e
@pytest.mark.parametrize("override, message", [
    ("eval.batch_size=0", "eval.batch_size=0: must be a whole number >= 1"),
    ("eval.listen_check=loud", "eval.listen_check='loud': must be null, noise or silence"),
    ("eval.force_mode=always", "eval.force_mode='always': must be null (the model chooses), think, direct or both"),
])
def test_evaluate_cli_stops_at_once(override, message, tmp_path):
    out, _ = _cli("audiothink.evaluate", [override, f"hydra.run.dir={tmp_path / 'ev'}"], tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_threads_sets_torchs_threads_before_anything_loads(threads, tmp_path, monkeypatch):
    """`cpu_threads` is applied at the start of train(), before the rewards, the data or the model are built: one
    thread is what makes a CPU run repeat exactly (configs/train.yaml)."""
    import torch

    from audiothink import train

    before = torch.get_num_threads()
    monkeypatch.setattr(train, "force_prefill", lambda mode: (_ for _ in ()).throw(ConfigError("stop here")))
    cfg = _compose([f"cpu_threads={threads}", f"output_dir={tmp_path}"])
    try:
        with pytest.raises(ConfigError, match="stop here"):
            train.train(cfg)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


# -- every judge with every task a reward asks it --------------------------------------------------------------

LISTENS = ["+reward.listens.weight=0.5", "+reward.listens.fn._target_=my_rewards.Listens",
           "+reward.listens.fn.judge=${judge}"]
# (what the reward asks, overrides): a built-in prompt by name, a prompt name no judge has, the README's reward
# with its own Prompt object
TASKS = {
    "consistency": ["reward=full"],
    "politeness by name": ["reward=full", "reward.consistency.fn.prompt=politeness"],
    "the README's Listens": LISTENS,
}
JUDGES = {"rule": ["judge=rule"], "toy_logic": ["judge=toy_logic"], "hf": ["judge=hf", "judge.path=/models/judge"],
          "openai": ["judge=openai"]}
# the pairings no judge can score, with the reason in the message
REFUSED = {
    ("rule", "politeness by name"): "reward.consistency: the rule judge has no rule for 'politeness'",
    ("rule", "the README's Listens"): "reward.listens: the rule judge has no rule for 'listens' (only "
                                      "['consistency', 'think_quality']): use judge=hf or judge=openai",
    ("toy_logic", "politeness by name"): "reward.consistency: the rule judge has no rule for 'politeness'",
    ("toy_logic", "the README's Listens"): "reward.listens: the rule judge has no rule for 'listens' (only "
                                           "['consistency', 'think_quality']): use judge=hf or judge=openai",
    ("hf", "politeness by name"): "reward.consistency: HFJudge: no prompt named 'politeness' in judge.prompts",
    ("openai", "politeness by name"): "reward.consistency: OpenAIJudge: no prompt named 'politeness' in judge.prompts",
}


@pytest.fixture
def readme_rewards(tmp_path, monkeypatch):
    """The README's my_rewards.py, importable."""
    from tests.test_reward_api_plugins import readme_plugin_blocks

    (tmp_path / "my_rewards.py").write_text(readme_plugin_blocks()[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return tmp_path


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("judge", list(JUDGES))
def test_every_judge_task_pairing_is_checked_before_anything_loads(judge, task, readme_rewards):
    cfg = _compose(JUDGES[judge] + TASKS[task])
    message = REFUSED.get((judge, task))
    if message is None:
        check_train_config(cfg)  # the hf judge's model is not loaded for this: its path need not exist
        return
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["+reward.b.fn._target_=my_rewards.brevity"], "reward.b.fn._target_=my_rewards.brevity: a function is called at "
     "start-up with the config's arguments (it needs completions, difficulty); add reward.b.fn._partial_=true"),
    (["+reward.b.fn._target_=broken_rewards.brevity", "+reward.b.fn._partial_=true"],
     "reward.b.fn._target_=broken_rewards.brevity: the import failed: No module named 'numpyy'"),
    (["+reward.b.fn._target_=my_rewards", "+reward.b.fn._partial_=true"],
     "reward.b.fn._target_='my_rewards': a module, not a function or class"),
    (["+reward.b.fn._target_=my_rewards.Listens", "+reward.b.fn.judge=${judgee}"], "reward.b.fn: Interpolation key "
     "'judgee' not found"),
    (["+reward.b.fn._target_=my_rewards.Listens"],
     "reward.b.fn: my_rewards.Listens needs judge: set reward.b.fn.judge=..."),
])
def test_a_reward_that_cannot_be_built(overrides, message, readme_rewards):
    (readme_rewards / "broken_rewards.py").write_text("import numpyy\n\n\ndef brevity(completions, **kw):\n"
                                                      "    return []\n")
    with pytest.raises(ConfigError) as info:
        check_train_config(_compose(["+reward.b.weight=1", *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_judge_prompt_asking_for_a_field_the_reward_does_not_send():
    cfg = _compose(["reward=full", "judge=hf", "judge.path=/models/judge",
                    "judge.prompts.consistency.template='Was {audio} heard?'"])
    with pytest.raises(ConfigError,
                       match=r"reward.consistency: judge prompt 'consistency' uses field\(s\) \['audio'\]"):
        check_train_config(cfg)


# -- model.path: a local checkpoint folder, nothing else ---------------------------------------------------------


def test_model_path_must_be_a_local_checkpoint(tmp_path):
    from audiothink.loading import check_model_path

    with pytest.raises(ConfigError, match=r"model.path='Qwen/Qwen2-Audio-7B-Instruct': no such folder, and hub ids "
                                          r"are not downloaded: set it to a local copy"):
        check_model_path("Qwen/Qwen2-Audio-7B-Instruct")
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/base", "peft_type": "LORA"}')
    with pytest.raises(ConfigError, match=rf"a LoRA adapter \(adapter_config.json\), not a model: evaluate it with "
                                          rf"adapter={adapter} on its base model \(/models/base\)"):
        check_model_path(str(adapter))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json, it is not a checkpoint"):
        check_model_path(str(tmp_path / "empty"))


def test_eval_max_new_tokens_0_is_refused_by_evaluate_too():
    from audiothink.evaluate import check_eval_config

    with pytest.raises(ConfigError, match=r"eval.max_new_tokens=0: must be a whole number >= 1"):
        check_eval_config(_compose(["eval.max_new_tokens=0"], name="evaluate"))
    check_eval_config(_compose(["eval.max_new_tokens=1"], name="evaluate"))


# -- the command line: each stops in seconds, one line, exit 2, no run folder ----------------------------------

CLI_ERRORS = {
    "judge without a rule": (LISTENS, "error: reward.listens: the rule judge has no rule for 'listens'"),
    "misspelt target": (["+reward.mentions.weight=1", "+reward.mentions.fn._target_=my_rewards.Listen"],
                        "error: reward.mentions.fn._target_=my_rewards.Listen: my_rewards has no 'Listen' (did you "
                        "mean my_rewards.Listens?)"),
    "misspelt shipped target": (["reward.format.fn._target_=audiothink.rewards.Fromat"],
                                "error: reward.format.fn._target_=audiothink.rewards.Fromat: audiothink.rewards has no 'Fromat' (did you "
                                "mean audiothink.rewards.Format?)"),
    "not a number": (["trainer.max_steps=abc"], "error: trainer.max_steps='abc': must be a whole number"),
    "hub id": (["model=qwen2_audio_7b"], "error: model.path='Qwen/Qwen2-Audio-7B-Instruct': no such folder, and hub "
                                         "ids are not downloaded: set it to a local copy"),
    "adapter as model": (["model.path=ADAPTER"], "error: model.path='ADAPTER': a LoRA adapter (adapter_config.json), "
                                                 "not a model: evaluate it with adapter=ADAPTER"),
    "new reward without +": (["reward.mine.weight=1"],
                             "error: unknown key reward.mine.weight; a new reward is added with '+': "
                             "+reward.mine.weight=... +reward.mine.fn._target_=..."),
    "save_steps off the logging grid": (["trainer.save_steps=7"], "error: trainer.save_steps=7: must be a multiple of "
                                                                  "trainer.logging_steps=10"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_train_cli_stops_before_anything_loads(case, tmp_path, readme_rewards):
    overrides, message = CLI_ERRORS[case]
    adapter = tmp_path / "lora-final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/base", "peft_type": "LORA"}')
    overrides = [o.replace("ADAPTER", str(adapter)) for o in overrides]
    out, seconds = _cli("audiothink.train", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(message.replace("ADAPTER", str(adapter))), line
    assert not re.search(r"^(data|model): ", out.stderr + out.stdout, re.M)  # neither data nor model loaded
    assert not (tmp_path / "cache").exists()  # not even the toy data set was built
    assert not (tmp_path / "run").exists()  # no stub run folder
    assert seconds < 60


@pytest.mark.parametrize("model, refused", [("toy", False), ("qwen2_5_omni_7b", False), ("qwen3_omni_tiny", True),
                                            ("qwen3_omni_30b_a3b", True)])
def test_vllm_rollouts_only_for_a_model_the_weight_sync_serves(model, refused):
    """rollout.engine=vllm with a model whose weights vllm_rollout cannot sync (Qwen3-Omni: fused experts) is one
    config error before anything loads, not a traceback after the model loads."""
    cfg = _compose([f"model={model}", "rollout.engine=vllm"])
    if refused:
        with pytest.raises(ConfigError, match=r"rollout.engine=vllm: model.cls=.*Qwen3OmniMoe.* is not supported"):
            check_train_config(cfg)
    else:
        try:
            check_train_config(cfg)
        except ConfigError as e:  # other checks (vLLM not installed here, a 7B path) may refuse; not this one
            assert "is not supported by the vLLM rollout path" not in str(e)
