"""Sharded training on the real engines, 2 CPU processes (gloo): FSDP2 and DeepSpeed ZeRO-2/3.

Each run is `accelerate launch --config_file configs/accelerate/<engine>.yaml --num_processes 2` of the real
entry point (through tests/e2e/dist_probe.py, which records per rank what the checks below read), on the
embedded toy with beta > 0 (the reference pass runs). No other launcher flag: without CUDA the entry point
turns the configs' bf16 off and makes accelerate set the engine up on CPU processes (audiothink/plumbing/sharding.py).

- FSDP2, full fine-tuning: an uninterrupted 3-step run, then a second run resumed from its step-2 sharded
  checkpoint; the resumed step 3 must equal the uninterrupted one (metrics and final weights, exactly).
- FSDP2, LoRA: 2 steps; the reference pass is the model with the adapter disabled.
- DeepSpeed ZeRO-2 (the `deepspeed` extra, DeepSpeed's CPU accelerator): as FSDP2 full fine-tuning.
- DeepSpeed ZeRO-3: 2 steps, including the held-out scoring before and after training.

In every run: the engine that trains is the launched one and holds its share only, the weights change,
λ and every row's rewards are the same on both ranks every step (tests/e2e/test_distributed.py's check),
rollouts are what an unsharded model with the same weights generates, and final/ loads with
`from_pretrained` and generates.

Breaking it on purpose makes it fail (checked by hand, see the report of issue 11): without
`fsdp_on_cpu_processes` the FSDP runs stop with a ConfigError (accelerate would train with DDP); without the
stop as well, the engine and sharding checks fail; `trainer.save_model` instead of `save_full_model` leaves
final/ without weights; a resume that skips loading the sharded weights makes step 3 differ;
`DIST_PROBE_LOCAL_LAMBDA=1` (tests/e2e/dist_probe.py) fails the λ check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audiothink.toy import TOY_MODEL_DIR
from tests.e2e.test_distributed import check_batch_wide_rewards
from tests.e2e.test_resume_processes import _files, _refused, _train
from tests.helpers import toy_cache as cache_with_toy

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
COMMON = [
    "trainer.per_device_train_batch_size=16",  # 2 prompts x G = 8 per rank and step
    "trainer.beta=0.04",  # KL to the reference: the reference pass runs
    "trainer.warmup_steps=0",  # every step moves the weights (the toy's warm-up starts at lr 0)
    "trainer.logging_steps=1",
    "trainer.save_steps=1",
    "trainer.report_to=[]",
    "eval.num_samples=0",
]
LORA = r"model.lora={r:4,alpha:8,dropout:0.0,target_modules:'^model\.language_model\..*\.(q_proj|v_proj)$'}"
# per-step values that must be equal after a resume (not timings)
COMPARED = ("loss", "grad_norm", "reward", "reward_std", "kl", "entropy", "think/rate", "num_tokens",
            "rewards/adaptive_think/mean", "rewards/format/mean", "rewards/accuracy/mean", "completions/mean_length")


@dataclass
class Run:
    dir: Path
    stdout: str
    records: dict[int, list[dict]]  # rank -> tests/e2e/dist_probe.py records, one per step
    engine: dict[int, dict]  # rank -> the engine and the parameters that rank holds (first rollout)
    steps: dict[int, dict]  # step -> logged training metrics

    def rollout(self, rank: int) -> dict:
        return torch.load(self.dir / f"probe-rollout-rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    return cache_with_toy(tmp_path_factory.mktemp("toy-cache"))  # the default toy set, linked in (tests/helpers.py)


def _launch(config: str, run_dir: Path, cache: Path, *overrides: str) -> Run:
    # what the launcher exports, and nothing that earlier in-process runs of the suite left behind (such as
    # ACCELERATE_USE_CPU, which audiothink.train sets on a CPU machine, and which DeepSpeed must not see)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_", "DS_"))}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", AUDIOTHINK_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / config), "--num_processes", "2",
        "-m", "tests.e2e.dist_probe", *COMMON, *overrides, f"hydra.run.dir={run_dir}",
    ]
    out = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-8000:]}"
    records = {r: [json.loads(line) for line in (run_dir / f"probe-rank{r}.jsonl").read_text().splitlines()]
               for r in (0, 1)}
    engine = {r: json.loads(p.read_text()) for r in (0, 1) if (p := run_dir / f"probe-engine-rank{r}.json").is_file()}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(run_dir, out.stdout, records, engine, {m["step"]: m for m in metrics if "loss" in m})


def _uninterrupted_and_resumed(config: str, tmp: Path, cache: Path, *overrides: str) -> tuple[Run, Run]:
    """STEPS steps, then a second run resumed from the first one's sharded checkpoint of step STEPS - 1."""
    full = _launch(config, tmp / "uninterrupted", cache, f"trainer.max_steps={STEPS}", *overrides)
    resumed = _launch(config, tmp / "resumed", cache, f"trainer.max_steps={STEPS}", *overrides,
                      f"resume={full.dir / f'checkpoint-{STEPS - 1}'}")
    return full, resumed


@pytest.fixture(scope="module")
def fsdp_full(tmp_path_factory, toy_cache):
    return _uninterrupted_and_resumed("fsdp.yaml", tmp_path_factory.mktemp("fsdp"), toy_cache)


@pytest.fixture(scope="module")
def fsdp_lora(tmp_path_factory, toy_cache):
    return _launch("fsdp.yaml", tmp_path_factory.mktemp("fsdp-lora") / "run", toy_cache, "trainer.max_steps=2", LORA)


@pytest.fixture(scope="module")
def zero2(tmp_path_factory, toy_cache):
    return _uninterrupted_and_resumed("zero2.yaml", tmp_path_factory.mktemp("zero2"), toy_cache)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, toy_cache):
    # eval.num_samples > 0: the held-out scoring before training runs on weights ZeRO-3 partitioned at load
    return _launch("zero3.yaml", tmp_path_factory.mktemp("zero3") / "run", toy_cache, "trainer.max_steps=2",
                   "eval.num_samples=4")


# -- checks shared by the engines ---------------------------------------------------------------------------


def _check_engine(run: Run, name: str, *, sharded_parameters: bool) -> None:
    """Both ranks trained with `name`; with sharded parameters each holds about half of them."""
    assert sorted(run.engine) == [0, 1], "the probe saw no first rollout on some rank"
    held = {}
    for rank in (0, 1):
        assert run.engine[rank]["engine"] == name
        held[rank] = run.engine[rank]["parameters"]
    total = held[0]["total"]
    assert held[1]["total"] == total > 100_000
    if sharded_parameters:
        for rank in (0, 1):
            assert held[rank]["local"] <= 0.55 * total, f"rank {rank} holds {held[rank]['local']} of {total}"
        assert held[0]["local"] + held[1]["local"] >= total  # every parameter is held somewhere (with padding)
    else:
        assert held[0]["local"] == held[1]["local"] == total


def _check_reference_pass(run: Run, steps: int) -> None:
    """β > 0: KL to the reference is 0 before the first update (the reference is the initial policy) and
    positive after (the reference did not follow the policy: a frozen copy, or the adapter disabled)."""
    assert sorted(run.steps) == list(range(1, steps + 1))
    assert run.steps[1]["kl"] == 0.0
    assert all(run.steps[s]["kl"] > 0 for s in range(2, steps + 1))


def _toy_weights() -> dict[str, torch.Tensor]:
    return load_file(TOY_MODEL_DIR / "model.safetensors")


def _check_final_model(run: Run, toy_files) -> dict[str, torch.Tensor]:
    """final/ is one whole checkpoint: loads with from_pretrained (no key missing or left over), generates
    from audio prompts, and holds trained weights."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    final = run.dir / "final"
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _check_generates(model, AutoProcessor.from_pretrained(final), toy_files)
    weights = load_file(final / "model.safetensors")
    toy = _toy_weights()
    assert sorted(weights) == sorted(toy)
    assert any(not torch.equal(weights[k], toy[k]) for k in toy), "final/ holds the initial weights"
    return weights


def _check_generates(model, processor, toy_files) -> None:
    from audiothink.data import load_samples
    from audiothink.inference import generate_batch

    samples = load_samples(toy_files["eval"]).samples[:2]
    batch = generate_batch(model.eval(), processor, samples, "{question}\n{choices}", max_new_tokens=8)
    assert batch.completion_mask.sum(1).min() > 0


def _check_rollouts_match_unsharded_model(run: Run, model=None) -> None:
    """The first step's prompts, decoded greedily through TRL's generation path on the engine's model (per
    rank), give the tokens an unsharded model with the same weights (the initial ones) gives."""
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration

    model = model or Qwen2AudioForConditionalGeneration.from_pretrained(TOY_MODEL_DIR)
    model.eval()
    lengths = []
    for rank in (0, 1):
        rec = run.rollout(rank)
        config = GenerationConfig.from_dict(rec["generation_config"])
        assert config.do_sample is False
        prompts = rec["prompt_ids"]
        width = max(map(len, prompts))
        pad = config.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **rec["features"], generation_config=config)
        eos = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
        expected = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
            expected.append(row[: end + 1])
        assert rec["completion_ids"] == expected, f"rank {rank}: the engine's rollout differs from the model's"
        lengths.append(max(map(len, expected)))
    assert len(rec["completion_ids"]) == 16 and min(lengths) > 1


def _check_resume(full: Run, resumed: Run) -> None:
    """The resumed run trained step STEPS only, exactly as the uninterrupted run did, and ends with the
    same weights (a resume that restored nothing, or not everything, would not)."""
    assert sorted(resumed.steps) == [STEPS]
    assert [r["step"] for r in resumed.records[0]] == [STEPS - 1]
    for key in COMPARED:
        assert resumed.steps[STEPS][key] == full.steps[STEPS][key], key
    for rank in (0, 1):  # the same rollouts, rewards and λ on each rank
        assert resumed.records[rank] == full.records[rank][-1:]
    a, b = load_file(full.dir / "final" / "model.safetensors"), load_file(resumed.dir / "final" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- FSDP2 --------------------------------------------------------------------------------------------------


def test_fsdp2_full_fine_tuning_trains_sharded(fsdp_full, toy_files):
    full, _ = fsdp_full
    _check_engine(full, "FSDP2", sharded_parameters=True)
    _check_reference_pass(full, STEPS)
    check_batch_wide_rewards(full.records, STEPS)
    _check_final_model(full, toy_files)
    assert full.stdout.count(f"({STEPS} steps)") == 1  # one summary, rank 0


def test_fsdp2_rollouts_are_the_whole_models(fsdp_full):
    _check_rollouts_match_unsharded_model(fsdp_full[0])


def test_fsdp2_checkpoints_are_sharded(fsdp_full):
    """Each rank wrote its own shards (torch distributed checkpoint); no whole weights in a checkpoint."""
    import torch.distributed.checkpoint as dcp

    ckpt = fsdp_full[0].dir / f"checkpoint-{STEPS - 1}"
    assert not list(ckpt.glob("*.safetensors")) and not (ckpt / "pytorch_model_fsdp.bin").exists()
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (ckpt / folder).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = dcp.FileSystemReader(str(ckpt / "pytorch_model_fsdp_0")).read_metadata()
    files_of = {}
    for index, info in meta.storage_data.items():
        files_of.setdefault(index.fqn, set()).add(info.relative_path)
    embed = next(k for k in files_of if k.endswith("embed_tokens.weight"))
    assert files_of[embed] == {"__0_0.distcp", "__1_0.distcp"}  # one tensor, half in each rank's file
    assert len(meta.state_dict_metadata[embed].chunks) == 2


def test_fsdp2_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(fsdp_full):
    _check_resume(*fsdp_full)


def test_fsdp2_lora(fsdp_lora, toy_files):
    """LoRA under FSDP2: adapter and frozen base sharded together, the reference pass is the base (adapter
    disabled), final/ is the adapter, which loads onto the base and generates."""
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    run = fsdp_lora
    _check_engine(run, "FSDP2", sharded_parameters=True)
    _check_reference_pass(run, 2)
    check_batch_wide_rewards(run.records, 2)
    _check_rollouts_match_unsharded_model(run)  # the adapter starts as a no-op (B = 0)
    final = run.dir / "final"
    adapter = load_file(final / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b), "the adapter did not train"
    assert all(".language_model." in k for k in adapter)
    model = PeftModel.from_pretrained(Qwen2AudioForConditionalGeneration.from_pretrained(TOY_MODEL_DIR), final)
    _check_generates(model, AutoProcessor.from_pretrained(final), toy_files)
    assert sorted(p.name for p in (run.dir / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]


def test_a_two_process_fsdp2_checkpoint_is_refused_without_a_launcher(fsdp_lora, toy_cache):
    """The FSDP2 LoRA run's sharded checkpoint, resumed by one process without a launcher: refused in one line
    before the model loads, the run folder untouched (tests/e2e/test_resume_processes.py says why)."""
    run = fsdp_lora.dir
    before = _files(run)
    out = _train(run, toy_cache, "resume=true", "trainer.max_steps=3")  # one process, no launcher
    _refused(out, run, before, "2 processes", "1 process")


# -- DeepSpeed ----------------------------------------------------------------------------------------------


def test_zero2_trains_with_sharded_optimizer_state(zero2, toy_files):
    full, _ = zero2
    _check_engine(full, "DeepSpeed ZeRO-2", sharded_parameters=False)  # ZeRO-2: weights whole on each rank
    _check_reference_pass(full, STEPS)
    check_batch_wide_rewards(full.records, STEPS)
    _check_final_model(full, toy_files)
    # the optimizer state is partitioned: each rank's file holds its half of the fp32 master weights
    parts = []
    for rank in (0, 1):
        path = full.dir / f"checkpoint-{STEPS - 1}" / f"global_step{STEPS - 1}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        state = torch.load(path, weights_only=False, map_location="cpu")["optimizer_state_dict"]
        assert state["zero_stage"] == 2 and set(state["partition_count"]) == {2}
        parts.append(sum(t.numel() for t in state["single_partition_of_fp32_groups"]))
    total = full.engine[0]["parameters"]["total"]
    assert parts[0] + parts[1] >= total and max(parts) <= 0.55 * total


def test_zero2_rollouts_are_the_whole_models(zero2):
    _check_rollouts_match_unsharded_model(zero2[0])


def test_zero2_resume_equals_the_uninterrupted_run(zero2):
    _check_resume(*zero2)


def test_zero3_trains_with_partitioned_weights(zero3, toy_files):
    run = zero3
    _check_engine(run, "DeepSpeed ZeRO-3", sharded_parameters=True)
    _check_reference_pass(run, 2)
    check_batch_wide_rewards(run.records, 2)
    _check_rollouts_match_unsharded_model(run)
    _check_final_model(run, toy_files)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["before"]["overall"]["n"] == summary["after"]["overall"]["n"] == 4
    # the checkpoint's gathered weights are saved under the hub names too
    assert sorted(load_file(run.dir / "checkpoint-2" / "model.safetensors")) == sorted(_toy_weights())
    ckpt = run.dir / "checkpoint-2" / "global_step2"
    assert sorted(p.name for p in ckpt.glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]


def test_engines_agree_on_the_first_step(fsdp_full, zero2):
    """The same toy, seed and batch: the engines shard differently, the first step's numbers are the same."""
    a, b = fsdp_full[0].steps[1], zero2[0].steps[1]
    for key in ("loss", "reward", "kl", "think/rate", "num_tokens"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
