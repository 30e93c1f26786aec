"""Turn a training run's weights into one checkpoint to serve: LoRA merged into the base, or the full model.

    python -m audiothink.export runs/<run>/final --out exports/<name>          # or <run>/best, <run>/checkpoint-N
    python -m audiothink.evaluate benchmark=toy model.path=exports/<name>     # evaluate / serve it like any model

A LoRA run's `final/` holds only the adapter; vLLM, `pipeline(...)` and the hub want one folder with the whole
weights. A LoRA source is loaded on its base (the run's `config.yaml` `model.path`, else the adapter's
`base_model_name_or_path`; `--base` when the base has moved) with the run's `model.cls` and dtype, merged with
PEFT's `merge_and_unload` (W + scale * B A, the same function the adapter computes) and saved with
`save_pretrained`: safetensors under the names the checkpoint was loaded from (the hub names), config and
generation config. A fully fine-tuned source is copied as it is, without the training state. Both get the
run's processor (tokenizer, feature extractor, chat template) and a model card, README.md, with what the run
did: base model, data, rewards, steps, the held-out figures before and after (config.yaml, summary.json).

`write_model_card` also fills `<run>/final/README.md` at the end of training (PEFT leaves an empty template).
A bad input (not a run's weights folder, no adapter or weights in it, `--out` not empty, a base that is not
there) is one line, `error: ...`, exit 2, before any weights load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from audiothink.plumbing.errors import ConfigError

__all__ = ["export", "write_model_card", "model_card", "parameter_line", "main"]

# The export's provenance record in the exported folder.
EXPORT_RECORD = "audiothink_export.json"
# Files of a checkpoint that serve only to resume training (or that the export writes itself).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt",
                  "rng_state*.pth", "latest", "zero_to_fp32.py", "global_step*", "README.md", EXPORT_RECORD)


# -- what the export reads ----------------------------------------------------------------------------------


def _run_dir(source: Path) -> Path:
    """The run folder that `source` (final/, best/, checkpoint-N/) belongs to: the one with config.yaml."""
    if not source.is_dir():
        raise ConfigError(f"{source}: no such folder (pass a run's final/, best/ or checkpoint-N/)")
    if (source / "config.yaml").is_file() and not (source / "adapter_config.json").is_file() \
            and not (source / "config.json").is_file():
        hint = f" (did you mean {source / 'final'}?)" if (source / "final").is_dir() else ""
        raise ConfigError(f"{source} is a run folder, not its weights: pass its final/, best/ or checkpoint-N/{hint}")
    if not (source.parent / "config.yaml").is_file():
        raise ConfigError(f"{source}: not a training run's weights folder (no config.yaml in {source.parent}); "
                          "pass <run>/final, <run>/best or <run>/checkpoint-N")
    return source.parent


def _kind(source: Path) -> str:
    """lora (adapter_config.json + adapter weights) or full (config.json + safetensors weights)."""
    if (source / "adapter_config.json").is_file():
        if not any(source.glob("adapter_model.*")):
            raise ConfigError(f"{source}: adapter_config.json but no adapter_model.safetensors: nothing to merge")
        return "lora"
    if (source / "config.json").is_file() and any(source.glob("*.safetensors")):
        return "full"
    raise ConfigError(f"{source}: no LoRA adapter (adapter_config.json) and no full weights (config.json and "
                      "*.safetensors): nothing to export (a sharded FSDP checkpoint-N/ holds none; export final/)")


def _check_out(out: Path, source: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder (nothing is overwritten)")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out}: inside the source folder {source}; choose a folder outside the run's weights")


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def base_model_path(source: Path, run_cfg: dict) -> str:
    """The base a LoRA adapter was trained on: the run's model.path, else the adapter config's."""
    adapter = _read_json(source / "adapter_config.json") or {}
    return str((run_cfg.get("model") or {}).get("path") or adapter.get("base_model_name_or_path") or "")


# -- the model card -----------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _heldout_table(summary: dict) -> list[str]:
    before, after = summary.get("before"), summary.get("after")
    if not after:
        return ["No held-out figures were recorded (eval.num_samples=0 or no held-out set)."]
    rows = [("overall", "overall")] + [(f"by_difficulty.{k}", k) for k in after.get("by_difficulty", {})] \
        + [(f"by_task.{k}", f"task {k}") for k in after.get("by_task", {})]
    lines = ["| held-out | n | accuracy before | accuracy after | think rate before | think rate after |",
             "|---|---|---|---|---|---|"]
    for key, label in rows:
        a = after[key] if key == "overall" else after[key.split(".")[0]][key.split(".", 1)[1]]
        b = None
        if before:
            b = before.get(key) if key == "overall" else before.get(key.split(".")[0], {}).get(key.split(".", 1)[1])
        lines.append(f"| {label} | {a['n']} | {_pct(b and b['accuracy'])} | {_pct(a['accuracy'])} | "
                     f"{_pct(b and b['think_rate'])} | {_pct(a['think_rate'])} |")
    return lines


def model_card(run_dir: Path, *, kind: str, base: str, exported_from: Path | None = None,
               steps: int | None = None) -> str:
    """README.md for a run's weights: the facts of `run_dir`'s config.yaml and summary.json, in markdown.

    `kind`: "lora" (an adapter on `base`), "merged" (the adapter merged into `base`) or "full".
    """
    cfg = _read_yaml(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json") or {}
    model, data, trainer = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("trainer") or {}
    lora = model.get("lora") or {}
    steps = steps if steps is not None else summary.get("steps")
    rewards = cfg.get("reward") or {}
    what = {"lora": f"a LoRA adapter (r={lora.get('r')}, alpha={lora.get('alpha')}) for `{base}`",
            "merged": f"`{base}` with a LoRA adapter (r={lora.get('r')}, alpha={lora.get('alpha')}) merged in",
            "full": f"`{base}`, fully fine-tuned"}[kind]
    front = {"base_model": base, "library_name": "peft" if kind == "lora" else "transformers",
             "tags": ["audiothink", "grpo", "audio", "adaptive-thinking"] + (["lora"] if kind != "full" else [])}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {run_dir.name}", "",
             f"{what[0].upper()}{what[1:]}, trained with GRPO by audiothink to decide when to think before answering audio "
             "questions (`<think>…</think>` then `<answer>…</answer>`, or the answer alone).", "",
             "## Training", "",
             f"- **Base model:** `{base}` (`{model.get('cls')}`, {model.get('dtype')})",
             f"- **Fine-tuning:** " + (f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout "
                                       f"{lora.get('dropout')}, target modules `{lora.get('target_modules')}`"
                                       if lora else "full" + (" (audio encoder frozen)"
                                                              if model.get("freeze_audio_encoder") else "")),
             f"- **Data:** format `{data.get('format')}`, train `{data.get('train')}`, held-out `{data.get('eval')}`"
             + (f", abstain share {data['abstain'].get('share')}" if (data.get("abstain") or {}).get("share") else ""),
             f"- **Rewards:** " + (", ".join(f"`{name}` (weight {r.get('weight')}, "
                                            f"`{(r.get('fn') or {}).get('_target_')}`)"
                                            for name, r in rewards.items() if isinstance(r, dict)) or "–")
             + (f"; total = `{rewards['formula']}`" if isinstance(rewards.get("formula"), str) else ""),
             f"- **Steps:** {steps if steps is not None else '–'} of trainer.max_steps={trainer.get('max_steps')}; "
             f"{trainer.get('num_generations')} completions per prompt, {trainer.get('per_device_train_batch_size')} "
             f"completions per device per step, learning rate {trainer.get('learning_rate')}, loss "
             f"`{trainer.get('loss_type')}`, beta {trainer.get('beta')}, at most "
             f"{trainer.get('max_completion_length')} completion tokens",
             f"- **Seed:** {cfg.get('seed')}",
             ]
    if exported_from is not None:
        lines.append(f"- **Exported from:** `{exported_from}`" + (" (adapter merged with PEFT's merge_and_unload)"
                                                                 if kind == "merged" else ""))
    note = []
    if exported_from is not None and exported_from.name != "final" and summary.get("after"):
        note = [f"The figures of the run's final weights (step {summary.get('steps')}); these weights are "
                f"`{exported_from.name}`" + (f" (step {steps})." if steps is not None else "."), ""]
    lines += ["", "## Held-out results (greedy)", "", *note, *_heldout_table(summary), "",
              "## Prompt", "", "The user turn it was trained with (`{question}` and `{choices}` filled in, the audio "
              "before the text):", "", "```", str(cfg.get("prompt", "")).rstrip(), "```", "", "## Use", ""]
    cls_module, _, cls = str(model.get("cls")).rpartition(".")
    processor_module, _, processor_cls = str(model.get("processor") or "transformers.AutoProcessor").rpartition(".")
    imports = [f"from {processor_module} import {processor_cls}", f"from {cls_module or 'transformers'} import {cls}"]
    if kind == "lora":
        lines += ["```python", "from peft import PeftModel", *imports, "",
                  f"base = {cls}.from_pretrained({base!r})",
                  "model = PeftModel.from_pretrained(base, \"<this folder>\")",
                  f"processor = {processor_cls}.from_pretrained(\"<this folder>\")", "```", "",
                  "One folder with the merged weights: `python -m audiothink.export <this folder> --out <dir>`."]
    else:
        lines += ["```python", *imports, "",
                  f"model = {cls}.from_pretrained(\"<this folder>\")",
                  f"processor = {processor_cls}.from_pretrained(\"<this folder>\")", "```", "",
                  "Evaluate: `python -m audiothink.evaluate benchmark=... model.path=<this folder>` (with the run's "
                  "model=... config)."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, run_dir: Path, *, steps: int | None = None) -> Path:
    """Fill `folder`/README.md (a run's final/ or checkpoint) with the run's model card."""
    folder, run_dir = Path(folder), Path(run_dir)
    kind = "lora" if (folder / "adapter_config.json").is_file() else "full"
    cfg = _read_yaml(run_dir / "config.yaml")
    base = base_model_path(folder, cfg)
    path = folder / "README.md"
    path.write_text(model_card(run_dir, kind=kind, base=base, steps=steps), encoding="utf-8")
    return path


# -- the model log line of training --------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def parameter_line(model) -> str:
    """`LoRA r=8 on 12 modules: 0.05 M trainable of 0.52 M parameters` or `full fine-tuning: ...`.

    `model` as the trainer holds it (a PeftModel for LoRA). ds_numel: under DeepSpeed ZeRO-3 the weights are
    partitioned as they load (each process holds a part), numel() is then the part's size.
    """
    def numel(p) -> int:
        return getattr(p, "ds_numel", p.numel())

    params = list(model.parameters())
    total, trainable = sum(numel(p) for p in params), sum(numel(p) for p in params if p.requires_grad)
    counts = f"{_count(trainable)} trainable of {_count(total)} parameters"
    config = getattr(model, "peft_config", None)
    if not config:
        return f"full fine-tuning: {counts}"
    from peft.tuners.lora import LoraLayer

    lora = next(iter(config.values()))
    wrapped = sum(isinstance(m, LoraLayer) for m in model.modules())
    return f"LoRA r={getattr(lora, 'r', '?')} on {wrapped} modules: {counts}"


# -- the export -------------------------------------------------------------------------------------------


def _processor_into(source: Path, out: Path, run_cfg: dict, fallback: str) -> None:
    """The run's processor (saved into every checkpoint by training), else the base model's."""
    from transformers import AutoProcessor

    from audiothink.loading import import_object as _import

    name = (run_cfg.get("model") or {}).get("processor")
    cls = _import(name) if name else AutoProcessor
    where = source if (source / "processor_config.json").is_file() or (source / "tokenizer_config.json").is_file() \
        else fallback
    cls.from_pretrained(str(where)).save_pretrained(out)


def _check_base(path: str) -> None:
    """The base model of a LoRA export: a local checkpoint folder, or a hub id (resolved by transformers).

    audiothink.loading.check_model_path's rule, without importing transformers (a wrong input fails in a second)."""
    where = "(pass --base <path or hub id> where it is now)"
    if not path:
        raise ConfigError(f"the adapter's base model is not recorded in the run's config.yaml or adapter_config.json {where}")
    p = Path(path).expanduser()
    local = path.startswith(("/", "./", "../", "~")) or path.count("/") != 1 or p.exists()
    if local and not (p / "config.json").is_file():
        raise ConfigError(f"the adapter's base model {path}: " + ("no config.json there, not a checkpoint"
                                                                  if p.is_dir() else "no such folder") + f" {where}")


def check_export(source: str | Path, out: str | Path, *, base: str | None = None) -> tuple[Path, str, dict, str]:
    """(run folder, "lora" or "full", the run's config, the base model) of an export, or a ConfigError; in
    milliseconds, nothing loaded."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    run_dir = _run_dir(source)
    kind = _kind(source)
    _check_out(out, source)
    run_cfg = _read_yaml(run_dir / "config.yaml")
    if not (run_cfg.get("model") or {}).get("cls"):
        raise ConfigError(f"{run_dir / 'config.yaml'}: no model.cls: not an audiothink training run's config")
    base_path = base or base_model_path(source, run_cfg)
    if kind == "lora":
        _check_base(base_path)
    return run_dir, kind, run_cfg, base_path


def export(source: str | Path, out: str | Path, *, base: str | None = None, dtype: str | None = None) -> Path:
    """Write the merged (LoRA) or copied (full) model of a run's weights folder `source` into `out`."""
    run_dir, kind, run_cfg, base_path = check_export(source, out, base=base)
    source, out = Path(source).expanduser(), Path(out).expanduser()
    model_cfg = run_cfg["model"]
    if kind == "full" and dtype:
        raise ConfigError(f"--dtype {dtype}: a fully fine-tuned model is copied as it was saved; --dtype is for "
                          "merging a LoRA adapter")
    dtype = dtype or model_cfg.get("dtype") or "float32"
    import torch

    from audiothink.loading import import_object as _import

    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ConfigError(f"--dtype {dtype}: not a torch dtype (float32, bfloat16, float16)")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "lora":
            from peft import PeftModel

            from audiothink.plumbing.sharding import keep_used_weight_renamings

            print(f"export: merging the LoRA adapter {source} into {base_path} ({dtype})", flush=True)
            model = _import(model_cfg["cls"]).from_pretrained(base_path, dtype=getattr(torch, dtype))
            keep_used_weight_renamings(model)  # saved under the names it was loaded from
            merged = PeftModel.from_pretrained(model, str(source)).merge_and_unload()
            merged.save_pretrained(out)
            _processor_into(source, out, run_cfg, base_path)
        else:
            print(f"export: copying the fully fine-tuned model {source}", flush=True)
            skip = shutil.ignore_patterns(*TRAINING_STATE)
            shutil.copytree(source, out, ignore=skip, dirs_exist_ok=True)
            if not (out / "generation_config.json").is_file() and base_path and Path(base_path).is_dir() \
                    and (Path(base_path) / "generation_config.json").is_file():
                shutil.copy2(Path(base_path) / "generation_config.json", out)
        steps = (_read_json(source / "trainer_state.json") or {}).get("global_step")
        # where the weights came from, for tools (audiothink.evaluate names it in its report); the card says it for people
        (out / EXPORT_RECORD).write_text(json.dumps({"source": str(source.resolve()), "run": str(run_dir.resolve()),
                                                     "kind": "merged" if kind == "lora" else "full",
                                                     "base_model": base_path, "steps": steps}, indent=2) + "\n")
        (out / "README.md").write_text(model_card(run_dir, kind="merged" if kind == "lora" else "full",
                                                  base=base_path, exported_from=source, steps=steps),
                                       encoding="utf-8")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written model that looks loadable
        if existed:
            out.mkdir()
        raise
    print(f"export: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})", flush=True)
    return out


def _quiet_console() -> None:
    """Library warnings as one `warning: logger: message` line each; no loading bars (as in training)."""
    import logging

    from audiothink.plumbing.console import ConsoleFormatter, setup_console

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(ConsoleFormatter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    setup_console()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m audiothink.export",
        description="Merge a run's LoRA adapter into its base model (or copy a fully fine-tuned model) into one "
                    "folder that from_pretrained, vLLM and audiothink.evaluate (model.path=...) load; with a model card.")
    parser.add_argument("source", help="a training run's final/, best/ or checkpoint-N/ folder")
    parser.add_argument("--out", required=True, help="the new folder (must not exist, or be empty)")
    parser.add_argument("--base", default=None, help="LoRA only: the base model's path or hub id, when it is no "
                        "longer where the run's config.yaml says")
    parser.add_argument("--dtype", default=None, help="LoRA only: dtype of the merged weights (default: the run's "
                        "model.dtype)")
    args = parser.parse_args(argv)
    try:
        check_export(args.source, args.out, base=args.base)  # a wrong input: one line before torch is imported
        _quiet_console()
        export(args.source, args.out, base=args.base, dtype=args.dtype)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
