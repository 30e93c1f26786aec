"""configs/accelerate/*.yaml: each loads with accelerate's own loader, says what it should (distributed type,
ZeRO stage, FSDP wrap classes that exist in the models), has consistent numbers, and resolves through the
launcher's own argument handling into the environment the training processes would get. No GPU needed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "accelerate"
GPUS_PER_MACHINE = 8

# file -> (distributed type, ZeRO stage or None, machines, trainer overrides the file's header prescribes)
EXPECTED = {
    "ddp.yaml": (DistributedType.MULTI_GPU, None, 1, {}),
    "zero2.yaml": (DistributedType.DEEPSPEED, 2, 1, {}),
    "zero3.yaml": (DistributedType.DEEPSPEED, 3, 1, {}),
    "fsdp.yaml": (DistributedType.FSDP, None, 1, {}),
    "multi_node.yaml": (DistributedType.DEEPSPEED, 2, 2, {"gradient_accumulation_steps": 1}),
}
PUBLISHED_PROMPTS_PER_STEP = 16  # Audio-Thinker: effective batch 16 on 8 GPUs


def _launcher_args(name: str, *extra: str):
    """What `accelerate launch --config_file <name> <extra> -m audiothink.train` resolves its arguments to."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / name), *extra, "-m", "audiothink.train", "seed=0"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def _launcher_env(name: str, *extra: str) -> tuple[object, dict[str, str]]:
    args, defaults = _launcher_args(name, *extra)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


def test_every_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    cfg = load_config_from_file(str(CONFIGS / name))  # unknown top-level keys are an error here
    assert isinstance(cfg, ClusterConfig)
    dist_type, stage, machines, _ = EXPECTED[name]
    assert cfg.distributed_type == dist_type
    assert cfg.mixed_precision == "bf16" and cfg.use_cpu is False
    if stage is None:
        assert cfg.deepspeed_config == {}
    else:
        assert cfg.deepspeed_config["zero_stage"] == stage
    # nested keys are not checked by the loader: each must be a launcher option, or it is silently ignored
    dests = {a.dest for a in launch_command_parser()._actions}
    unknown = [k for k in [*cfg.deepspeed_config, *cfg.fsdp_config] if k not in dests]
    assert not unknown, f"{name}: not accelerate launch options: {unknown}"
    # numbers: all processes of the run = machines x GPUs per machine, this machine's rank among them
    assert cfg.num_machines == machines
    assert cfg.num_processes == cfg.num_machines * GPUS_PER_MACHINE
    assert 0 <= cfg.machine_rank < cfg.num_machines
    if machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_field_has_a_comment(name):
    lines = (CONFIGS / name).read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not previous.lstrip().startswith("#") and " #" not in line:
            missing.append(line.strip())
    assert not missing, f"{name}: fields without a comment: {missing}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_batch_is_the_published_one(name):
    """The 7B recipe (configs/trainer/recipe.yaml) on this layout, with the overrides its header prescribes:
    TRL needs the generation batch to be whole groups, and the step stays at the published 16 prompts."""
    cfg = load_config_from_file(str(CONFIGS / name))
    recipe = yaml.safe_load((REPO / "configs/trainer/recipe.yaml").read_text()) | EXPECTED[name][3]
    completions = cfg.num_processes * recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"]
    assert completions % recipe["num_generations"] == 0
    assert completions // recipe["num_generations"] == PUBLISHED_PROMPTS_PER_STEP
    for key, value in EXPECTED[name][3].items():
        assert f"trainer.{key}={value}" in (CONFIGS / name).read_text()


def test_launcher_environment_deepspeed():
    args, env = _launcher_env("zero3.yaml")
    assert args.num_processes == 8
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # left to the trainer config ("auto" in DeepSpeed), so the two can never disagree
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env
    _, env = _launcher_env("zero2.yaml")
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"


def test_launcher_environment_ddp_and_fsdp():
    args, env = _launcher_env("ddp.yaml")
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp
    assert args.nproc_per_node == "8"
    args, env = _launcher_env("fsdp.yaml")
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2AudioEncoderLayer,Qwen2DecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"  # checkpoints sharded; final/ gathered at the end


def test_launcher_multi_node_second_node():
    """The README's node-1 command: 8 local processes of 16, rendezvous at node 0's address."""
    args, env = _launcher_env("multi_node.yaml", "--machine_rank", "1", "--main_process_ip", "10.0.0.1")
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_endpoint == "10.0.0.1:29500"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"


def test_launcher_vllm_server_layout(monkeypatch):
    """README: GPU 0 for the vLLM server, training on GPUs 1-7 with zero2.yaml and 7 processes.

    On a CUDA machine, as the README's layout is: accelerate (1.16 and later) writes `--gpu_ids` into the
    visible-devices variable of the machine's accelerator (torch.accelerator), and on this CPU machine into none."""
    import torch

    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))
    args, env = _launcher_env("zero2.yaml", "--num_processes", "7", "--gpu_ids", "1,2,3,4,5,6,7")
    assert args.num_processes == 7
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2,3,4,5,6,7"


def _wrap_lists() -> list[str]:
    """Every --fsdp_transformer_layer_cls_to_wrap value written in fsdp.yaml's header and the README."""
    text = (CONFIGS / "fsdp.yaml").read_text() + (REPO / "README.md").read_text()
    return re.findall(r"--fsdp_transformer_layer_cls_to_wrap\s+([\w,]+)", text)


def test_fsdp_wrap_classes_exist_in_the_models(toy_model_dir):
    """accelerate stops when a listed class is not in the model: check them on the real architectures (the
    toy Qwen2-Audio and the tiny Omni thinkers are built from transformers' own classes)."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    from audiothink.toy.omni import build_omni_processor, build_omni_thinker
    from tests.helpers import load_toy

    qwen2_audio, _ = load_toy(toy_model_dir)
    cfg = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    for cls in cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert get_module_class_from_name(qwen2_audio, cls) is not None, cls

    omni_lists = _wrap_lists()
    assert omni_lists and all("Omni" in v for v in omni_lists)
    omni = build_omni_thinker(build_omni_processor())
    qwen3 = [v for v in omni_lists if "Qwen3OmniMoe" in v]  # the Qwen3-Omni thinker's list (README)
    assert qwen3, "README names the Qwen3-Omni thinker's FSDP2 wrap list"
    from audiothink.toy.qwen3_omni import build_qwen3_omni_processor, build_qwen3_omni_thinker

    qwen3_omni = build_qwen3_omni_thinker(build_qwen3_omni_processor())
    for value in omni_lists:
        model = qwen3_omni if value in qwen3 else omni
        for cls in value.split(","):
            assert get_module_class_from_name(model, cls) is not None, cls
    # and the Qwen2-Audio list would not fit Omni (hence the override)
    assert get_module_class_from_name(omni, "Qwen2AudioEncoderLayer") is None


def test_deepspeed_is_an_optional_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("deepspeed") for req in extras["deepspeed"])
