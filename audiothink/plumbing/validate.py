"""Every config value that can be judged on its own, checked before any data or model is loaded.

A wrong value found here costs a second; found after the data set, the model and the "before" held-out
pass, it costs minutes on a 7B model, and some (a negative learning rate or KL weight, ``max_steps=0``)
would not fail at all but train something else. Each problem is a :class:`ConfigError` whose one-line
message names the key, the value and what it must be; the entry points print it and exit 2.

Checks that need the data (a data set too small for one step) are in :func:`check_dataset_size`, run right
after the data is read and before the model is loaded.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audiothink.plumbing import grpo_fields
from audiothink.plumbing.errors import ConfigError
from audiothink.formats import FORCE_PREFILLS

__all__ = ["grpo_choices", "check_train_config", "check_eval_settings", "check_dataset_size", "prompts_per_step"]

# The metric names of the held-out scoring during training (audiothink/heldout_eval.py), here so that the
# eval.* checks need no transformers import: the figures of inference.score logged for all items, and for each
# slice (difficulty=<d>, task=<t>)
OVERALL_STATS = ("accuracy", "think_rate", "format_failure_rate")
SLICE_STATS = ("accuracy", "think_rate")
# the keys of a benchmark scored during training: benchmark/<name>/<stat>, benchmark/<name>/<dim>/<value>/<stat>
BENCHMARK_PREFIX = "benchmark"


def metric_problem(metric: object, benchmark: str | None = None) -> str | None:
    """Why ``metric`` cannot be an ``eval.best_metric`` (None: it has the form of a logged ``heldout/`` key, or of a
    ``benchmark/<benchmark>/…`` key when ``benchmark``, the name of eval.benchmark's benchmark, is given)."""
    if not isinstance(metric, str):
        return "must be a heldout/... metric name (or null: keep no best/)"
    parts = metric.split("/")
    if len(parts) == 2 and parts[0] == "heldout" and parts[1] in OVERALL_STATS:
        return None
    if (len(parts) == 4 and parts[0] == "heldout" and parts[1] in ("difficulty", "task") and parts[2]
            and parts[3] in SLICE_STATS):
        return None
    if benchmark is not None and parts[:2] == [BENCHMARK_PREFIX, benchmark]:
        if len(parts) == 3 and parts[2] in OVERALL_STATS:
            return None
        if len(parts) == 5 and parts[2] and parts[3] and parts[4] in SLICE_STATS:
            return None
    bench = (f", {BENCHMARK_PREFIX}/{benchmark}/<{'|'.join(OVERALL_STATS)}> or {BENCHMARK_PREFIX}/{benchmark}/"
             f"<dimension>/<value>/<{'|'.join(SLICE_STATS)}> (eval.benchmark)" if benchmark is not None else "")
    return ("must be one of " + ", ".join(f"heldout/{s}" for s in OVERALL_STATS)
            + " or heldout/<difficulty|task>/<name>/<" + "|".join(SLICE_STATS) + ">" + bench)


def benchmark_config(value: str) -> DictConfig:
    """``eval.benchmark``'s ``benchmark:`` block, resolved: a benchmark config's name (configs/benchmark/<name>.yaml,
    as ``python -m audiothink.evaluate benchmark=<name>`` reads it: MMAU_ROOT / MMAR_ROOT name the data folders) or
    the path of a yaml file holding such a block. ConfigError when there is none (no data is read)."""
    from omegaconf import OmegaConf

    from audiothink import CONFIG_DIR

    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"eval.benchmark={value!r}: must be a benchmark config's name (e.g. toy, mmau_test_mini, "
                          "mmar) or the path of a benchmark yaml file (or null: none)")
    path = Path(value).expanduser()
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = Path(CONFIG_DIR) / "benchmark" / f"{value}.yaml"
    names = sorted(p.stem for p in (Path(CONFIG_DIR) / "benchmark").glob("*.yaml"))
    if not path.is_file():
        raise ConfigError(f"eval.benchmark={value!r}: no such benchmark config (one of {', '.join(names)}, or the "
                          "path of a yaml file with a benchmark: block)")
    try:
        node = OmegaConf.load(path).get("benchmark")
        block = OmegaConf.create(OmegaConf.to_container(node, resolve=True)) if node is not None else None
    except Exception as e:  # noqa: BLE001 - a yaml or interpolation error: one line naming the file
        raise ConfigError(f"eval.benchmark={value!r}: {path}: {e}") from None
    if block is None or not all(k in block for k in ("name", "format", "meta", "root")):
        raise ConfigError(f"eval.benchmark={value!r}: {path} has no benchmark: block with name, format, root and "
                          "meta (see configs/benchmark/toy.yaml)")
    return block


@functools.cache
def grpo_choices(field: str) -> tuple[str, ...]:
    """The values the installed TRL's GRPOConfig documents for a string field (its help text quotes each one).

    ``loss_type``: grpo, dr_grpo, dapo, ... (anything else fails in the first loss computation);
    ``importance_sampling_level``: token, sequence (anything else fails there too). Read from TRL, so that a TRL
    upgrade that adds a value needs no change here (for the pinned TRL from its snapshot, which imports nothing:
    audiothink/plumbing/grpo_fields.py).
    """
    return grpo_fields.choices(field)


def _number(section: str, cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{section}.{key}={value!r}: must be a number")
    return value


WHAT = {int: "a whole number", float: "a number", bool: "true or false"}


def check_types(section: str, values: DictConfig, kinds: dict[str, type]) -> None:
    """Each value of ``values`` named in ``kinds`` has that type (None aside): a type error is said as one
    (``trainer.max_steps='abc': must be a whole number``), never as a range error on a string."""
    for key, kind in kinds.items():
        if key not in values:
            continue
        value = OmegaConf.select(values, key)
        if value is None:
            continue
        ok = isinstance(value, bool) if kind is bool else (
            not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int))
        if not ok:
            raise ConfigError(f"{section}.{key}={value!r}: must be {WHAT[kind]}")


def _positive_int(section: str, cfg: DictConfig, key: str, *, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{section}.{key}={value!r}: must be a whole number >= 1")


def _whole(steps: Any) -> int | None:
    """A step count >= 1 as an int (10 or 10.0); None for a fraction of the run (TrainingArguments' < 1 form)."""
    return int(steps) if isinstance(steps, (int, float)) and steps >= 1 and float(steps).is_integer() else None


def _did_you_mean(value: Any, options) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate launch set WORLD_SIZE), 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prompts_per_step(trainer: DictConfig, processes: int | None = None) -> int:
    """Distinct prompts in one generation batch: per-device batch × processes × steps per generation / G."""
    processes = processes or world_size()
    steps_per_generation = trainer.get("steps_per_generation") or trainer.get("gradient_accumulation_steps", 1)
    generation_batch = trainer.get("generation_batch_size") or (
        trainer.per_device_train_batch_size * processes * steps_per_generation
    )
    return generation_batch // trainer.num_generations


def check_trainer(trainer: DictConfig) -> None:
    """The GRPO hyper-parameters (TRL GRPOConfig fields) that TRL accepts but cannot train with."""
    t = "trainer"
    # TRL arguments that would take the prompt off the audio path, each refused with its reason; the chat
    # template's variables must be a mapping (audiothink/prompts.py)
    from audiothink.prompts import BYPASSES_AUDIO_PATH

    for key, reason in BYPASSES_AUDIO_PATH.items():
        if key in trainer:
            raise ConfigError(f"trainer.{key}: {reason}")
    kwargs = trainer.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, DictConfig):
        raise ConfigError(f"trainer.chat_template_kwargs={kwargs!r}: must be a mapping of chat-template variables "
                          "({name: value, ...}) or null")
    # every number and switch first, for its type (TRL's own field types): then the ranges below
    check_types(t, trainer, grpo_fields.field_kinds())
    lr = _number(t, trainer, "learning_rate")
    if lr is None or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"trainer.learning_rate={lr!r}: must be > 0")
    beta = _number(t, trainer, "beta")
    if beta is not None and (beta < 0 or not math.isfinite(beta)):
        raise ConfigError(f"trainer.beta={beta!r}: the KL weight must be >= 0 (a negative one rewards drifting away)")
    temperature = _number(t, trainer, "temperature")
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"trainer.temperature={temperature!r}: must be > 0 (sampling needs it; greedy rollouts give "
                          "every completion of a group the same reward)")
    for key in ("max_completion_length", "per_device_train_batch_size", "gradient_accumulation_steps",
                "num_iterations", "num_generations", "steps_per_generation", "generation_batch_size"):
        _positive_int(t, trainer, key, allow_none=key not in ("per_device_train_batch_size", "num_generations"))
    if trainer.num_generations < 2:
        raise ConfigError(f"trainer.num_generations={trainer.num_generations}: GRPO needs at least 2 completions per "
                          "prompt (the advantage is the reward relative to its group)")
    logging_steps = _number(t, trainer, "logging_steps")
    if logging_steps is not None and not logging_steps > 0:
        raise ConfigError(f"trainer.logging_steps={logging_steps!r}: must be > 0")
    max_steps = trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be a whole number")
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be >= 1 (or -1 to train trainer.num_train_epochs)")
    if max_steps == -1 and not (_number(t, trainer, "num_train_epochs") or 0) > 0:
        raise ConfigError("trainer.max_steps=-1 needs trainer.num_train_epochs > 0")
    for key, default, what in (("loss_type", "dapo", ""), ("importance_sampling_level", "token",
                                                           " (token: GRPO, sequence: GSPO)")):
        value, choices = trainer.get(key, default), grpo_choices(key)
        if value not in choices:
            raise ConfigError(f"trainer.{key}={value!r}: must be one of {', '.join(choices)}{what}"
                              f"{_did_you_mean(value, choices)}")
    processes = world_size()
    steps_per_generation = trainer.get("steps_per_generation") or trainer.gradient_accumulation_steps
    batch = trainer.per_device_train_batch_size * processes * steps_per_generation
    if batch % trainer.num_generations:
        raise ConfigError(
            f"trainer.num_generations={trainer.num_generations} does not divide the generation batch of {batch} "
            f"completions (per_device_train_batch_size {trainer.per_device_train_batch_size} x {processes} "
            f"process(es) x {steps_per_generation} steps per generation): every prompt needs its whole group"
        )
    save_steps = trainer.get("save_steps")
    if trainer.get("save_strategy", "steps") == "steps" and save_steps is not None:
        if isinstance(save_steps, bool) or not isinstance(save_steps, (int, float)) or save_steps <= 0:
            raise ConfigError(f"trainer.save_steps={save_steps!r}: must be > 0 (set trainer.save_strategy=no to "
                              "save no checkpoint)")
        # A checkpoint inside a block of reused rollouts (num_iterations > 1, or a generation batch spanning
        # several optimizer steps) cannot be resumed exactly: the block's rollouts are not saved.
        block = trainer.num_iterations * steps_per_generation / trainer.gradient_accumulation_steps
        if isinstance(save_steps, int) and block > 1 and block == int(block) and save_steps % int(block):
            raise ConfigError(
                f"trainer.save_steps={save_steps}: must be a multiple of {int(block)}, the optimizer steps that reuse "
                "one batch of rollouts (num_iterations x steps_per_generation / gradient_accumulation_steps), so that "
                "every checkpoint resumes exactly"
            )
        # A resume logs the same metrics as an uninterrupted run only from a checkpoint at the end of a logging
        # window: the Trainer does not save the open window (its summed loss, TRL's per-step metrics), so the first
        # record after a mid-window checkpoint would average fewer steps than the uninterrupted run's.
        every = _whole(logging_steps) if trainer.get("logging_strategy", "steps") == "steps" else None
        if every and _whole(save_steps) and _whole(save_steps) % every:
            raise ConfigError(
                f"trainer.save_steps={save_steps}: must be a multiple of trainer.logging_steps={logging_steps}, so "
                "that every checkpoint ends a logging window and a resume logs the same metrics as an uninterrupted run"
            )


def check_eval_settings(section: str, batch_size: Any, *, num_samples: Any = 0, max_new_tokens: Any = 1) -> None:
    """``eval.*`` of either entry point: batch size and new tokens >= 1, a number of items >= 0."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{section}.batch_size={batch_size!r}: must be a whole number >= 1")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 0):
        raise ConfigError(f"{section}.num_samples={num_samples!r}: must be a whole number >= 0 (0 = no held-out "
                          "scoring)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"{section}.max_new_tokens={max_new_tokens!r}: must be a whole number >= 1")


def check_heldout_interval(eval_cfg: DictConfig) -> None:
    """eval.every_steps (null or >= 1, with held-out items or eval.benchmark), eval.benchmark (a benchmark config
    or null; its file is read, not its data) and eval.limit, eval.best_metric (a logged heldout/ or benchmark/ key
    or null), eval.best_mode (max or min): the scoring during training (audiothink/heldout_eval.py)."""
    every = eval_cfg.get("every_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"eval.every_steps={every!r}: must be a whole number >= 1 (or null: score only before "
                          "and after training)")
    value, limit = eval_cfg.get("benchmark"), eval_cfg.get("limit")
    bench_name = None if value is None else str(benchmark_config(value).name)
    if value is not None and every is None:
        raise ConfigError(f"eval.benchmark={value}: scored every eval.every_steps optimizer steps, which is null: set "
                          "eval.every_steps=N (or score the trained model afterwards: python -m audiothink.evaluate "
                          f"benchmark={value} model.path=<run>/final)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"eval.limit={limit!r}: must be null (all of eval.benchmark's items) or a whole number >= 1")
    if limit is not None and value is None:
        raise ConfigError(f"eval.limit={limit}: limits eval.benchmark's items, which is null (the held-out items are "
                          "eval.num_samples)")
    if every is not None and eval_cfg.get("num_samples") == 0 and value is None:
        raise ConfigError(f"eval.every_steps={every}: eval.num_samples=0 leaves no held-out items to score (and no "
                          "eval.benchmark is set)")
    metric = eval_cfg.get("best_metric")
    if (every is not None and eval_cfg.get("num_samples") == 0 and isinstance(metric, str)
            and metric.startswith("heldout/")):
        raise ConfigError(f"eval.best_metric={metric}: eval.num_samples=0 scores no held-out items; name one of "
                          f"eval.benchmark's figures (e.g. eval.best_metric=benchmark/{bench_name}/accuracy), or null")
    if metric is not None and (problem := metric_problem(metric, bench_name)):
        raise ConfigError(f"eval.best_metric={metric!r}: {problem}")
    mode = eval_cfg.get("best_mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"eval.best_mode={mode!r}: must be max (higher is better) or min (lower is better)")


def check_model(model: DictConfig) -> None:
    """model.*: the audio window, the switches that must be true or false, the router's auxiliary loss."""
    check_audio_window(model)
    for key in ("freeze_audio_encoder", "liger_kernels", "freeze_vision_tower"):
        value = model.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"model.{key}={value!r}: must be true or false")
    coef = _number("model", model, "router_aux_loss_coef")
    if coef is not None and coef < 0:
        raise ConfigError(f"model.router_aux_loss_coef={coef!r}: must be >= 0 (the weight of the router's "
                          "load-balancing loss; 0.0 turns it off)")


def check_audio_window(model: DictConfig) -> None:
    seconds = _number("model", model, "max_audio_seconds")
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"model.max_audio_seconds={seconds!r}: must be > 0 (the model's audio window, in seconds)")


def check_long_audio(data: DictConfig | None) -> None:
    """``data.long_audio``: what a clip longer than the model's window becomes (training, SFT and evaluation)."""
    from audiothink.audio import LONG_AUDIO

    value = data.get("long_audio") if data is not None else None
    if value not in LONG_AUDIO:
        raise ConfigError(f"data.long_audio={value!r}: must be chunk (split into window-long clips of the same "
                          "prompt), truncate (cut to the window, counted) or error (stop before the model loads)")


def check_reward_weights(reward: DictConfig) -> None:
    """All weights 0 and no formula: every reward is 0, every advantage 0, the run learns nothing."""
    entries = {k: v for k, v in reward.items() if k != "formula"}
    weights = [v.get("weight") for v in entries.values() if isinstance(v, DictConfig)]
    if reward.get("formula") is None and weights and all(w == 0 for w in weights):
        raise ConfigError(
            f"reward: every weight is 0 ({', '.join(entries)}) and there is no reward.formula: the total reward is "
            "0 for every completion, so no step would change the model"
        )


# hydra's own keys in a _target_ mapping: not arguments of the target
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def check_rewards(reward: DictConfig) -> None:
    """Every reward can be built, and its judge can score what the reward asks; judged before anything loads.

    Each ``_target_`` under ``reward.<name>.fn`` (the reward's own and a judge's) is imported and looked up, and
    the arguments the config gives are ones it takes: a misspelt name is one line naming the key, the target and
    the closest names there. A reward handed a judge (``judge: ${judge}``) asks it the tasks it names: its
    ``prompt`` argument (or that argument's default) and the :class:`~audiothink.judge.Prompt` objects of its
    class; the judge's own ``check_task`` says whether it can score each (the rule judge has rules for
    consistency and think_quality only; a model judge needs the prompt in judge.prompts, or the reward's own),
    from items with the fields the reward's class lists as ``judge_fields`` (audiothink.rewards.Consistency does).
    """
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for name, entry in reward.items():
        if name == "formula":
            continue
        key = f"reward.{name}"
        if not isinstance(entry, DictConfig) or "fn" not in entry or "weight" not in entry:
            raise ConfigError(f"{key}: expected a mapping with 'fn' (a _target_) and 'weight' (add a new reward "
                              f"with +{key}.weight=... +{key}.fn._target_=...)")
        weight = entry.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{key}.weight={weight!r}: must be a number")
        try:
            fn = OmegaConf.to_container(entry.fn, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:  # e.g. judge=hf without judge.path
            raise ConfigError(f"{key}: Missing mandatory value: {e.full_key or e.key} (set it on the command "
                              "line)") from None
        except OmegaConfBaseException as e:  # e.g. a misspelt ${judge}
            raise ConfigError(f"{key}.fn: {str(e).splitlines()[0]}") from None
        if not isinstance(fn, dict) or "_target_" not in fn:
            raise ConfigError(f"{key}.fn: needs a _target_ (the dotted path of the reward's function or class)")
        target = _check_target(f"{key}.fn", fn)
        _check_judge_tasks(key, target, fn, OmegaConf.to_container(entry.fn, resolve=False))


def _check_target(key: str, node: dict) -> Any:
    """Locate ``node['_target_']`` and every ``_target_`` nested in its arguments; check the arguments given.
    Returns the target."""
    import inspect

    for arg, value in node.items():
        if isinstance(value, dict) and "_target_" in value:
            _check_target(f"{key}.{arg}", value)
    target = locate(f"{key}._target_", node["_target_"])
    if not callable(target):
        raise ConfigError(f"{key}._target_={node['_target_']!r}: a {type(target).__name__}, not a function or class")
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): instantiation will tell
        return target
    given = [a for a in node if a not in HYDRA_KEYS]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for arg in given:
            if arg not in names:
                raise ConfigError(f"{key}.{arg}: {node['_target_']} takes no argument {arg!r}"
                                  f"{_did_you_mean(arg, names)}")
    if not node.get("_partial_"):
        positional = len(node.get("_args_") or ())
        required = [n for i, (n, p) in enumerate(params.items())
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    and n not in given and not (i < positional and p.kind is p.POSITIONAL_OR_KEYWORD)]
        if required and inspect.isroutine(target):
            raise ConfigError(f"{key}._target_={node['_target_']}: a function is called at start-up with the "
                              f"config's arguments (it needs {', '.join(required)}); add {key}._partial_=true to "
                              "pass the function itself as the reward")
        if required:
            raise ConfigError(f"{key}: {node['_target_']} needs {', '.join(required)}: set {key}.{required[0]}=...")
    return target


def locate(key: str, dotted: Any) -> Any:
    """The object a ``_target_`` names (what hydra's instantiate would call), or a ConfigError naming ``key``,
    the target and the closest names where the lookup stopped."""
    import importlib
    import pkgutil

    if not isinstance(dotted, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", dotted):
        raise ConfigError(f"{key}={dotted!r}: must be a dotted path to a function or class (module.name)")
    parts = dotted.split(".")
    if parts[0] in _linked_folders():
        # rewards.Format in a source checkout would import the repository folder a second time, under a name a
        # wheel does not ship: the config would fail on every installed copy (a cluster image, pip install)
        raise ConfigError(f"{key}={dotted}: the repository's {parts[0]}/ folder is the package audiothink.{parts[0]} "
                          f"(did you mean audiothink.{dotted}?)")
    obj, found = None, 0
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj, found = importlib.import_module(module), i
            break
        except ModuleNotFoundError as e:
            if e.name and not (module == e.name or module.startswith(e.name + ".")):
                # the module is there, but something it imports is not
                raise ConfigError(f"{key}={dotted}: the import failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed to import: say so, in one line
            raise ConfigError(f"{key}={dotted}: the import failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if obj is None:
        # the closest module: a top-level one, or one of audiothink's (rewards.Format in a wheel install, where the
        # built-in rewards are audiothink.rewards)
        import audiothink

        options = {m.name: m.name for m in pkgutil.iter_modules() if m.name not in _linked_folders()}
        options.update({m.name: f"audiothink.{m.name}" for m in pkgutil.iter_modules(audiothink.__path__)
                        if m.name not in options})
        close = difflib.get_close_matches(parts[0], list(options), n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join([options[close[0]], *parts[1:]])}?)" if close else ""
        raise ConfigError(f"{key}={dotted}: no module named {parts[0]!r} on the Python path{hint}")
    for i in range(found, len(parts)):
        if not hasattr(obj, parts[i]):
            options = [n for n in dir(obj) if not n.startswith("_")]
            if hasattr(obj, "__path__"):  # a package: its submodules too
                options += [m.name for m in pkgutil.iter_modules(obj.__path__)]
            prefix = ".".join(parts[:i])
            hint = _did_you_mean(parts[i], options)
            hint = hint.replace("(did you mean ", f"(did you mean {prefix}.") if hint else ""
            raise ConfigError(f"{key}={dotted}: {prefix} has no {parts[i]!r}{hint}")
        obj = getattr(obj, parts[i])
    return obj


@functools.cache
def _linked_folders() -> frozenset[str]:
    """The repository's top-level folders linked into the package (rewards/ is audiothink/rewards in a source
    checkout or an editable install); empty in a wheel install, which ships them inside audiothink only."""
    import audiothink

    root = Path(audiothink.__file__).parent
    return frozenset(p.name for p in root.iterdir() if p.is_symlink() and p.is_dir() and (p / "__init__.py").is_file())


def _check_judge_tasks(key: str, target: Any, fn: dict, raw: Any) -> None:
    """Each judge among the reward's arguments can score each task the reward names (see check_rewards)."""
    import inspect

    from audiothink.judge.base import Judge, Prompt

    judges = []
    for arg, value in fn.items():
        if isinstance(value, dict) and "_target_" in value:
            cls = locate(f"{key}.fn.{arg}._target_", value["_target_"])
            if isinstance(cls, type) and issubclass(cls, Judge):
                where = "judge" if isinstance(raw, dict) and raw.get(arg) == "${judge}" else f"{key}.fn.{arg}"
                judges.append((where, cls, value.get("prompts")))
    if not judges:
        return
    tasks: list[Any] = []
    prompt = fn.get("prompt", inspect.Parameter.empty)
    if prompt is inspect.Parameter.empty:
        try:
            prompt = inspect.signature(target).parameters["prompt"].default
        except (KeyError, TypeError, ValueError):
            prompt = None
    if isinstance(prompt, str):
        tasks.append(prompt)
    for klass in getattr(target, "__mro__", ()):
        tasks += [v for v in vars(klass).values() if isinstance(v, Prompt)]
    fields = getattr(target, "judge_fields", None)
    for where, cls, prompts in judges:
        try:
            judge = cls.for_checks(prompts)
        except ValueError as e:  # a bad judge prompt (no labels or scale, an unmatched brace)
            raise ConfigError(f"{where}.prompts: {e}") from None
        for task in tasks:
            try:
                judge.check_task(task, fields if fields is not None else judge.prompt_fields(task))
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
            except AttributeError:  # a judge whose check needs what its __init__ sets: it checks when built
                break


def check_train_config(cfg: DictConfig) -> None:
    """Everything in a training config that can be judged without data or a model."""
    check_trainer(cfg.trainer)
    check_model(cfg.model)
    check_eval_settings("eval", cfg.eval.batch_size, num_samples=cfg.eval.num_samples,
                        max_new_tokens=cfg.eval.max_new_tokens)
    check_rewards(cfg.reward)
    check_heldout_interval(cfg.eval)
    check_reward_weights(cfg.reward)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be a whole number")
    log_cfg, rollout = cfg.get("log"), cfg.get("rollout")
    if log_cfg is not None:
        check_types("log", log_cfg, {"completion_prompts": int, "plots": bool})
        if (log_cfg.get("completion_prompts") or 0) < 0:
            raise ConfigError(f"log.completion_prompts={log_cfg.completion_prompts}: must be >= 0 (0 writes none)")
    if rollout is not None:
        check_types("rollout", rollout, {"fast": bool})
        if rollout.get("engine") == "vllm":  # a model the weight sync cannot serve: before anything loads
            from audiothink.vllm_rollout import check_vllm_model

            check_vllm_model(cfg.model.get("cls"))
    threads = cfg.get("cpu_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"cpu_threads={threads!r}: must be a whole number >= 1 (or null: torch's default)")
    mode = cfg.get("force_mode")
    if mode is not None and mode not in FORCE_PREFILLS:
        raise ConfigError(f"force_mode={mode!r}: must be null (the model chooses), think or direct")
    cache = cfg.get("rollout", {}).get("compile_cache_dir")
    if cache is not None and (not isinstance(cache, str) or not cache.strip()):
        raise ConfigError(f"rollout.compile_cache_dir={cache!r}: must be a folder path (or null: the default cache)")
    limit = cfg.data.get("max_prompt_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.max_prompt_tokens={limit!r}: must be a whole number >= 1 (or null: no limit)")
    check_long_audio(cfg.data)
    from audiothink.sources import check_exclude_path

    check_exclude_path(cfg.data.get("exclude"))  # a wrong list path: before the data set and the model load


def check_dataset_size(rows: int, trainer: DictConfig) -> None:
    """A training set with fewer rows than one step's prompts gives zero steps (and an untrained final/)."""
    need = prompts_per_step(trainer)
    if rows < need:
        raise ConfigError(
            f"the training set has {rows} usable row(s), fewer than the {need} prompts of one step "
            f"(per_device_train_batch_size x processes x steps_per_generation / num_generations): no step could run"
        )
