"""Supervised fine-tuning (the cold start before GRPO), with the audio in every forward pass.

    python -m audiothink.sft data.train=/data/sft.jsonl model=qwen2_audio_7b     # rows with a `target` reply
    python -m audiothink.train model.path=<sft run>/final ...                    # then GRPO from its weights

Rows: the project's unified schema (audiothink/data.py: id, audio, question, choices, answer, ...) plus
``target``, the reply to learn: ``<think>…</think><answer>…</answer>`` or ``<answer>…</answer>``. The prompt
is built by the project's one prompt builder (:class:`audiothink.prompts.AudioPrompt`: the chat template
with one audio part per clip and ``trainer.chat_template_kwargs``, the processor's audio features), so SFT, GRPO
and evaluation see the same text.
The target (plus the tokenizer's eos) is appended after the left-padded prompt and is the only thing in the
loss; the audio features go into every forward pass (a pass without them raises).

Why an own loop and not TRL's SFTTrainer: SFTTrainer has no audio (its collator tokenizes text; images only
for vision models), so extending it would mean replacing its dataset preparation, collator and loss masking
— most of it — the way AudioGRPOTrainer replaces GRPO's prompt and log-prob passes. The loop here is a
hundred lines: AdamW, warm-up / constant / linear decay, gradient clipping, gradient accumulation; the toy's
warm start (audiothink/toy/warmstart.py) is one use of it (the same float operations as its former own loop:
the same weights, byte for byte). It runs on one device (CPU or one GPU); LoRA keeps a 7B model on one GPU.

The run folder is training's: config.yaml, sft.log, metrics.jsonl (loss and learning rate per logging step;
with eval.every_steps the held-out figures on the way), final/ (the weights and processor; with LoRA the
adapter merged into the base, so that GRPO's model.path can take it, and the adapter itself in final/adapter/),
summary.json (held-out figures of the result). No checkpoints and no resume: a stopped SFT run is started again.

Where to stop: a warm start for GRPO is one that writes both formats and hears the clips (forced to think, it
answers right) but has not yet learnt the hard items' one-pass shortcut (forced to answer directly, they stay
near chance), so that thinking has something to gain. When SFT reaches that depends on the seed, not only on the
step count; ``eval.stop_metric`` / ``eval.stop_at`` stop at the first held-out scoring that meets a rule instead
(e.g. ``think/accuracy >= 0.9``), and say so when none did. GRPO samples its rollouts, so the thoughts must also
hold up sampled (``eval.sampled_temperature``, rule mode ``sampled_think``); a second run on the thought-out rows
alone with the mode tag out of the loss (``sft.target_mode=think sft.mode_tag_loss=false``) sharpens them without
training the direct answers or the mode choice. On the toy, that two-phase recipe (README "Cold start (SFT) then
GRPO") gave warm starts that the GRPO default trained to its targets on every seed tried; the first phase alone
did not (bench/RESULTS.md, cold_start).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import audiothink.train  # noqa: E402,F401 - registers the run folder's resolvers (launch_time, toy_model_dir)
from audiothink import CONFIG_DIR
from audiothink.prompts import training_prompt

log = logging.getLogger("audiothink.sft")

TARGET_FIELD = "target"


# ----------------------------------------------------------------------------------------------------------
# one batch: prompt + target reply, loss on the target only
# ----------------------------------------------------------------------------------------------------------


def encode_replies(processor, waves: Sequence[Sequence[np.ndarray]], prompts: Sequence[str],
                   targets: Sequence[str], chat_template_kwargs=None, *,
                   mode_tag_loss: bool = True) -> dict[str, torch.Tensor]:
    """The model's inputs for rendered user ``prompts`` with their clips (``waves[i]``) and target replies.

    The prompts go through :meth:`audiothink.prompts.AudioPrompt.encode` (left-padded; no prefill: the target is
    the whole reply); each target, with the tokenizer's eos appended, follows on the right; ``labels`` are the
    target tokens, -100 elsewhere. ``mode_tag_loss=False``: the tokens of a target's opening tag (``<think>`` or
    ``<answer>``, the ones that choose the mode) are -100 too (``sft.mode_tag_loss``).
    """
    from audiothink.prompts import AudioPrompt

    tok = processor.tokenizer
    enc = AudioPrompt(processor, chat_template_kwargs=chat_template_kwargs).encode(prompts, waves)
    tgt = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"] for t in targets]
    tag_tokens = [0] * len(tgt) if mode_tag_loss else [mode_tag_length(tok, t, ids) for t, ids in zip(targets, tgt)]
    width = max(len(t) for t in tgt)
    ids = torch.full((len(tgt), width), tok.pad_token_id)
    mask = torch.zeros((len(tgt), width), dtype=torch.long)
    for i, t in enumerate(tgt):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    input_ids = torch.cat([enc["input_ids"], ids], dim=1)
    attention = torch.cat([enc["attention_mask"], mask], dim=1)
    labels = input_ids.masked_fill(attention == 0, -100)
    prompt_width = enc["input_ids"].size(1)
    labels[:, :prompt_width] = -100
    for i, n in enumerate(tag_tokens):
        labels[i, prompt_width : prompt_width + n] = -100
    features = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, **features}


def mode_tag_length(tok, target: str, ids: Sequence[int]) -> int:
    """How many of ``ids`` (``target`` tokenized) are its opening mode tag (``<think>`` or ``<answer>``): the tokens
    the tag alone tokenizes to, where the target's own tokens start with them (0 for a target without the tag)."""
    from audiothink.formats import ANSWER_OPEN, THINK_OPEN

    tag = next((t for t in (THINK_OPEN, ANSWER_OPEN) if target.startswith(t)), None)
    if tag is None:
        return 0
    alone = tok(tag, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(alone), len(ids)) and alone[n] == ids[n]:
        n += 1
    return n


def sft_loss(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the target tokens, the audio features in the pass."""
    if "input_features" not in inputs:
        raise RuntimeError("SFT forward pass without audio features")
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    moved = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
             for k, v in inputs.items()}
    return model(**moved).loss


# ----------------------------------------------------------------------------------------------------------
# the loop (shared with the toy's warm start)
# ----------------------------------------------------------------------------------------------------------


def lr_factor(step: int, steps: int, warmup_steps: int, decay_from: float) -> float:
    """Linear warm-up over ``warmup_steps``, constant, then linear decay to 0 from ``decay_from`` of the steps."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    decay_start = int(decay_from * steps)
    if step < decay_start:
        return warm
    return warm * max(0.0, 1.0 - (step - decay_start) / max(1, steps - decay_start))


def train_steps(model, batches: Iterable[Sequence], loss_fn: Callable, *, steps: int, learning_rate: float,
                warmup_steps: int, decay_from: float, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                on_step: Callable[[int, list[float]], bool | int | None] | None = None) -> list[float]:
    """AdamW over ``steps`` optimizer steps; ``batches`` yields, per step, a sequence of micro-batches (gradient
    accumulation: the loss of each is divided by their number). ``loss_fn(model, micro_batch)`` is the loss.
    ``on_step(step, losses)`` runs after each step: ``True`` stops the loop there (the schedule stays the one over
    ``steps``); a whole number ``n >= 1`` trains ``n`` more steps (at most up to ``steps``) with the learning rate
    decaying linearly from its value at that step towards 0 (:func:`anneal_factor`), then stops; ``None`` /
    ``False`` go on. Returns the per-step losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    # the anneal, once on_step asked for one: (the step after which it starts, its length, the factor there)
    anneal: list[tuple[int, int, float]] = []

    def factor(s: int) -> float:
        if anneal:
            return anneal_factor(s, *anneal[0])
        return lr_factor(s, steps, warmup_steps, decay_from)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses: list[float] = []
    for step, micro in zip(range(steps), batches):
        total = 0.0
        for mb in micro:
            loss = loss_fn(model, mb)
            if len(micro) > 1:
                loss = loss / len(micro)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total)
        verdict = on_step(step, losses) if on_step is not None else None
        if verdict is True or anneal and step >= anneal[0][0] + anneal[0][1]:
            break
        if verdict and not anneal:
            anneal.append((step, int(verdict), lr_factor(step, steps, warmup_steps, decay_from)))
            for group in opt.param_groups:  # the next step's rate: the scheduler computed it before the anneal
                group["lr"] = learning_rate * factor(step + 1)
    return losses


def anneal_factor(step: int, start: int, length: int, at_start: float) -> float:
    """The learning-rate factor of ``step`` in an anneal of ``length`` steps after step ``start`` (0-based),
    where the factor was ``at_start``: linear towards 0, ``at_start * (1 - k / (length + 1))`` for the k-th
    step of the anneal (the last one still trains: it is not a step at rate 0)."""
    k = step - start
    return at_start * max(0.0, 1.0 - k / (length + 1))


# ----------------------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------------------


def check_targets(samples) -> None:
    """Every row has a well-formed ``target`` reply (think or direct format); else a DataError listing them."""
    from audiothink.data import DataError
    from audiothink.formats import parse

    bad = []
    for s in samples:
        t = s.extra.get(TARGET_FIELD)
        if not isinstance(t, str) or not t.strip():
            bad.append(f"{s.id}: no {TARGET_FIELD!r} field (the reply to learn)")
        elif not parse(t).well_formed:
            bad.append(f"{s.id}: {TARGET_FIELD} {t[:60]!r} is neither <think>…</think><answer>…</answer> "
                       "nor <answer>…</answer>")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} SFT row(s) without a usable target: " + "; ".join(bad[:3]) + more)


def check_sft_config(cfg: DictConfig) -> None:
    """The SFT settings that can be judged alone: before anything loads."""
    from audiothink.plumbing.errors import ConfigError

    s = cfg.sft
    for key in ("batch_size", "gradient_accumulation_steps", "epochs"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise ConfigError(f"sft.{key}={s[key]!r}: must be a whole number >= 1")
    if s.max_steps is not None and (not isinstance(s.max_steps, int) or s.max_steps < 1):
        raise ConfigError(f"sft.max_steps={s.max_steps!r}: must be a whole number >= 1 or null")
    if not 0.0 <= float(s.decay_from) <= 1.0:
        raise ConfigError(f"sft.decay_from={s.decay_from!r}: must be in [0, 1]")
    if not float(s.learning_rate) > 0:
        raise ConfigError(f"sft.learning_rate={s.learning_rate!r}: must be > 0")
    if s.target_mode not in (None, "think", "direct"):
        raise ConfigError(f"sft.target_mode={s.target_mode!r}: must be think, direct or null")
    if not isinstance(s.mode_tag_loss, bool):
        raise ConfigError(f"sft.mode_tag_loss={s.mode_tag_loss!r}: must be true or false")
    e = cfg.eval
    temp = e.get("sampled_temperature")
    if temp is not None and (not isinstance(temp, (int, float)) or isinstance(temp, bool) or not temp > 0):
        raise ConfigError(f"eval.sampled_temperature={temp!r}: must be a number > 0 or null")
    every = e.get("every_steps")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ConfigError(f"eval.every_steps={every!r}: must be a whole number >= 1 or null")
    metric = e.get("stop_metric")
    anneal = e.get("stop_anneal_steps")
    if anneal is not None and (not isinstance(anneal, int) or isinstance(anneal, bool) or anneal < 0):
        raise ConfigError(f"eval.stop_anneal_steps={anneal!r}: must be a whole number >= 0 or null")
    if anneal and metric is None:
        raise ConfigError(f"eval.stop_anneal_steps={anneal}: anneals after the stop rule; set eval.stop_metric too")
    if metric is None:
        return
    parts = str(metric).split("/")
    if len(parts) not in (2, 3) or parts[0] not in STOP_MODES or parts[-1] not in STOP_STATS:
        raise ConfigError(f"eval.stop_metric={metric!r}: must be <mode>/<stat> or <mode>/<slice>/<stat>, mode one "
                          f"of {', '.join(STOP_MODES)}, stat one of {', '.join(STOP_STATS)} (e.g. think/accuracy)")
    if every is None or not e.num_samples:
        raise ConfigError(f"eval.stop_metric={metric}: needs the held-out items scored during SFT "
                          f"(eval.every_steps=N and eval.num_samples > 0)")
    if parts[0] in ("think", "direct") and not e.forced_modes:
        raise ConfigError(f"eval.stop_metric={metric}: a forced mode's figure needs eval.forced_modes=true")
    if parts[0] == "sampled_think" and e.get("sampled_temperature") is None:
        raise ConfigError(f"eval.stop_metric={metric}: the sampled figure needs eval.sampled_temperature (e.g. 1.2, "
                          f"GRPO's rollout temperature)")
    if not isinstance(e.stop_at, (int, float)) or isinstance(e.stop_at, bool) or not 0.0 <= e.stop_at <= 1.0:
        raise ConfigError(f"eval.stop_at={e.stop_at!r}: must be a number in [0, 1]")


# eval.stop_metric's modes: the key of the held-out figures they read (heldout_figures)
STOP_MODES = {"free": "after", "think": "after_think", "direct": "after_direct",
              "sampled_think": "after_think_sampled"}
STOP_STATS = ("accuracy", "think_rate", "format_failure_rate")


def stop_metric_value(figures: dict, metric: str) -> float:
    """The held-out figure ``metric`` names (``think/accuracy``, ``direct/hard/accuracy``: mode, optional
    difficulty or task slice, stat) in :func:`heldout_figures`' result. KeyError: a slice the items do not have."""
    parts = metric.split("/")
    scored = figures[STOP_MODES[parts[0]]]
    if len(parts) == 2:
        return float(scored["overall"][parts[1]])
    for group in ("by_difficulty", "by_task"):
        if parts[1] in scored[group]:
            return float(scored[group][parts[1]][parts[2]])
    raise KeyError(parts[1])


def batches_of(samples, *, batch_size: int, accum: int, steps: int, shuffle: bool, seed: int):
    """Per step, ``accum`` micro-batches of ``batch_size`` samples: the rows in order (or a seeded new
    permutation each epoch), cycled."""
    rng = np.random.default_rng([seed, 0x5F7])
    n = len(samples)

    def stream():
        while True:
            order = rng.permutation(n) if shuffle else range(n)
            yield from (samples[int(i)] for i in order)

    rows = stream()
    for _ in range(steps):
        yield [[next(rows) for _ in range(batch_size)] for _ in range(accum)]


def sample_inputs(processor, samples, prompt: str, max_audio_seconds: float | None,
                  chat_template_kwargs=None, *, long_audio: str = "truncate",
                  model_type: str | None = None, mode_tag_loss: bool = True) -> dict[str, torch.Tensor]:
    """:func:`encode_replies` for rows read from disk (clips loaded as GRPO's rollouts load them: a clip over the
    model's window as ``long_audio`` makes it, :class:`audiothink.audio.AudioWindow`)."""
    from audiothink.data import render_prompt
    from audiothink.inference import load_waves

    waves = load_waves(processor, samples, max_audio_seconds, long_audio=long_audio, model_type=model_type)
    return encode_replies(processor, waves, [render_prompt(s, prompt) for s in samples],
                          [s.extra[TARGET_FIELD] for s in samples], chat_template_kwargs,
                          mode_tag_loss=mode_tag_loss)


# ----------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------


@hydra.main(config_path=str(CONFIG_DIR), config_name="sft", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from audiothink.plumbing.errors import USER_ERRORS
    from audiothink.plumbing.rundir import guard_log_files, remove_if_unused

    guard_log_files()
    try:
        return sft(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        remove_if_unused(cfg.output_dir, ("final", "metrics.jsonl"))
        sys.exit(2)


def sft(cfg: DictConfig) -> dict:
    from audiothink.plumbing.errors import ConfigError
    from audiothink.plumbing.validate import check_long_audio

    # every value that can be judged alone, before anything is loaded (or transformers imported: seconds)
    check_sft_config(cfg)
    check_long_audio(cfg.data)
    from transformers import set_seed

    from audiothink.plumbing import runfiles
    from audiothink.plumbing.console import setup_console
    from audiothink.plumbing.rundir import claim
    from audiothink.loading import build_peft_config, check_model_path, load_model_and_processor, load_model_config, load_processor
    from audiothink.prompts import config_chat_template_kwargs, row_checks
    from audiothink.sources import load_training_data

    setup_console()
    if cfg.get("resume") not in (None, False):
        raise ConfigError("resume: SFT runs keep no checkpoints; start the run again")
    run_dir = claim(Path(cfg.output_dir), resume=False)
    OmegaConf.set_struct(cfg, False)
    if cfg.prompt is None:
        cfg.prompt = training_prompt()
    OmegaConf.set_struct(cfg, True)
    runfiles.write_config(run_dir, cfg, None)
    set_seed(cfg.seed)
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    check_model_path(cfg.model.path)

    processor = load_processor(cfg.model)
    if cfg.data.generate_toy:
        from audiothink.toy.data import ensure_toy

        ensure_toy(Path(cfg.data.root))
    template_kwargs = config_chat_template_kwargs(cfg)  # training's (trainer.chat_template_kwargs)
    model_config = load_model_config(cfg.model)
    model_type = model_config.model_type  # the shortest clip a chunked clip's last piece is held to
    checks = row_checks(processor, cfg.prompt, max_prompt_tokens=cfg.data.get("max_prompt_tokens"),
                        max_audio_seconds=cfg.model.max_audio_seconds, model_config=model_config,
                        chat_template_kwargs=template_kwargs, long_audio=cfg.data.long_audio)
    try:
        train, held_out = load_training_data(cfg.data, max_audio_seconds=cfg.model.max_audio_seconds, checks=checks)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        raise ConfigError(str(e)) from e
    check_targets(train)
    held_out = held_out[: cfg.eval.num_samples]
    metric = cfg.eval.get("stop_metric")
    wanted = metric.split("/")[1] if metric is not None and metric.count("/") == 2 else None  # a slice
    if wanted is not None:
        slices = {x.difficulty or "unknown" for x in held_out} | {x.task or "unknown" for x in held_out}
        if wanted not in slices:
            raise ConfigError(f"eval.stop_metric={metric}: the held-out items have no slice "
                              f"{wanted!r} (difficulties and tasks: {', '.join(sorted(slices))})")
    s = cfg.sft
    modes = [parse_mode(x.extra[TARGET_FIELD]) for x in train]
    log.info("data: %d SFT rows (%.0f%% think targets), %d held-out items", len(train),
             100 * modes.count("think") / len(modes), len(held_out))
    if s.target_mode is not None:
        from audiothink.data import DataError

        kept = [x for x, m in zip(train, modes) if m == s.target_mode]
        if not kept:
            raise DataError(f"sft.target_mode={s.target_mode}: none of the {len(train)} SFT rows has a "
                            f"{s.target_mode} target")
        log.info("sft.target_mode=%s: training on its %d rows, the %d others left out", s.target_mode, len(kept),
                 len(train) - len(kept))
        train = kept
    per_step = s.batch_size * s.gradient_accumulation_steps
    steps = s.max_steps or max(1, math.ceil(s.epochs * len(train) / per_step))

    model, processor = load_model_and_processor(cfg.model, processor)
    lora = cfg.model.lora is not None
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, build_peft_config(cfg.model.lora, model))
    if torch.cuda.is_available():
        model.to("cuda")
    if s.activation_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("model: %s (%s), %s, %.1f M of %.1f M parameters trained", cfg.model.cls, cfg.model.path,
             "LoRA" if lora else "full fine-tuning", trainable / 1e6, total / 1e6)
    log.info("sft: %d steps of %d rows (%d x %d), lr %g", steps, per_step, s.gradient_accumulation_steps,
             s.batch_size, s.learning_rate)

    metrics = (run_dir / "metrics.jsonl").open("w", encoding="utf-8")
    t0 = time.time()

    every = cfg.eval.get("every_steps")
    anneal_steps = cfg.eval.get("stop_anneal_steps") or 0
    stopped: dict = {}  # the rule's step (1-based), figure and, with an anneal, its length

    def last_step() -> int:
        """The run's last step (0-based): the planned one, or the stop's (plus its anneal)."""
        if not stopped:
            return steps - 1
        return min(steps - 1, stopped["step"] - 1 + stopped.get("anneal_steps", 0))

    def rate(step: int) -> float:
        """The learning rate of step ``step`` (0-based), as train_steps sets it."""
        if stopped and stopped.get("anneal_steps") and step >= stopped["step"]:
            start = stopped["step"] - 1
            return s.learning_rate * anneal_factor(step, start, stopped["anneal_steps"],
                                                   lr_factor(start, steps, s.warmup_steps, s.decay_from))
        return s.learning_rate * lr_factor(step, steps, s.warmup_steps, s.decay_from)

    def on_step(step: int, losses: list[float]) -> bool | int:
        end = step == last_step()
        if not (step + 1) % s.logging_steps or end:
            window = losses[-s.logging_steps:]
            metrics.write(json.dumps({"step": step + 1, "loss": float(np.mean(window)),
                                      "learning_rate": rate(step)}) + "\n")
            metrics.flush()
            log.info("step %d/%d  loss %.4f  lr %.2e  (%.0fs)", step + 1, steps, np.mean(window), rate(step),
                     time.time() - t0)
        # the last step is scored below, on the saved weights, as without every_steps; an anneal is not scored
        if stopped or not every or not held_out or (step + 1) % every or end:
            return False
        figures = heldout_figures(model, processor, held_out, cfg, step + 1)
        metrics.write(json.dumps({"step": step + 1, "heldout": figures}) + "\n")
        metrics.flush()
        for key, scored in figures.items():
            log.info(figure_line(f"step {step + 1} {key}", scored))
        if metric is None:
            return False
        value = stop_metric_value(figures, metric)
        if value < cfg.eval.stop_at:
            return False
        stopped.update(step=step + 1, metric=metric, value=value, stop_at=float(cfg.eval.stop_at))
        more = min(anneal_steps, steps - 1 - step)
        if more:
            stopped["anneal_steps"] = more
            log.info("stop: held-out %s %.1f%% >= %.1f%% at step %d of %d: %d more steps with the learning rate "
                     "decaying from %.2e towards 0 (eval.stop_anneal_steps), then final/", metric, 100 * value,
                     100 * cfg.eval.stop_at, step + 1, steps, more, rate(step))
            return more
        log.info("stop: held-out %s %.1f%% >= %.1f%% at step %d of %d: its weights are final/", metric, 100 * value,
                 100 * cfg.eval.stop_at, step + 1, steps)
        return True

    batches = ([sample_inputs(processor, mb, cfg.prompt, cfg.model.max_audio_seconds, template_kwargs,
                              long_audio=cfg.data.long_audio, model_type=model_type, mode_tag_loss=s.mode_tag_loss)
                for mb in micro]
               for micro in batches_of(train, batch_size=s.batch_size, accum=s.gradient_accumulation_steps,
                                       steps=steps, shuffle=s.shuffle, seed=cfg.seed))
    with metrics:
        trained = train_steps(model, batches, sft_loss, steps=steps, learning_rate=s.learning_rate,
                              warmup_steps=s.warmup_steps, decay_from=s.decay_from, weight_decay=s.weight_decay,
                              max_grad_norm=s.max_grad_norm, on_step=on_step)
    final = run_dir / "final"
    if lora:
        model.save_pretrained(final / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(final, safe_serialization=True)
    processor.save_pretrained(final)
    log.info("saved %s (%.0fs)", final, time.time() - t0)

    # steps: those trained (fewer than planned_steps when eval.stop_metric stopped the run: `stopped`)
    summary: dict = {"run_dir": str(run_dir), "steps": len(trained), "planned_steps": steps}
    if metric is not None:
        summary["stopped"] = stopped or None
    if held_out:
        log.info("held-out: scoring %d items with the fine-tuned weights", len(held_out))
        summary.update(heldout_figures(model, processor, held_out, cfg, len(trained)))
        for key, figures in summary.items():
            if key.startswith("after"):
                log.info(figure_line(key, figures))
    # the last step is scored here, not in on_step: the rule is checked on these figures too, so that the warning
    # says "never" only when no scoring, the last included, reached the value
    if metric is not None and not stopped:
        last = stop_metric_value(summary, metric) if held_out else None
        if last is not None and last >= cfg.eval.stop_at:
            log.info("stop: held-out %s %.1f%% >= %.1f%% first at the last step (%d): final/", metric, 100 * last,
                     100 * cfg.eval.stop_at, steps)
        else:
            log.warning("stop: held-out %s never reached %.1f%% in %d steps: final/ is the last step's weights",
                        metric, 100 * cfg.eval.stop_at, steps)
    (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "run_dir"},
                                                     indent=2) + "\n")
    log.info("next: python -m audiothink.train model.path=%s ...", final)
    return summary


def heldout_figures(model, processor, samples, cfg: DictConfig, step: int = 0) -> dict:
    """Held-out scores: ``after`` (greedy free choice, as GRPO's summary scores); with ``eval.forced_modes``,
    ``after_think`` / ``after_direct`` (greedy, each reply prefilled with that mode); with
    ``eval.sampled_temperature``, ``after_think_sampled``: forced to think, sampled at that temperature (what GRPO's
    rollouts see), from a generator seeded by ``cfg.seed`` and ``step`` that leaves training's random state as it
    was (the figures repeat, and scoring does not change the run)."""
    from audiothink.formats import force_prefill
    from audiothink.inference import generate_answers, score
    from audiothink.prompts import config_chat_template_kwargs, config_long_audio

    temperature = cfg.eval.get("sampled_temperature")
    runs = [("after", None, None)]
    if cfg.eval.forced_modes:
        runs += [("after_think", "think", None), ("after_direct", "direct", None)]
    if temperature is not None:
        runs.append(("after_think_sampled", "think", float(temperature)))
    figures = {}
    devices = [model.device.index or 0] if model.device.type == "cuda" else []  # the RNG the sampling draws from
    for key, mode, temp in runs:
        with torch.random.fork_rng(devices=devices):
            if temp is not None:
                torch.manual_seed(cfg.seed * 1_000_003 + step)
            outputs = generate_answers(model, processor, samples, cfg.prompt, batch_size=cfg.eval.batch_size,
                                       max_new_tokens=cfg.eval.max_new_tokens,
                                       max_audio_seconds=cfg.model.max_audio_seconds, prefill=force_prefill(mode),
                                       do_sample=temp is not None, temperature=temp or 1.0,
                                       chat_template_kwargs=config_chat_template_kwargs(cfg),
                                       long_audio=config_long_audio(cfg))
        figures[key] = score(samples, outputs)
    return figures


def figure_line(key: str, figures: dict) -> str:
    """``held-out after: accuracy 71.3%, think 12.0% (easy 90.1% / think 3.0%, hard ...)``."""
    o = figures["overall"]
    parts = ", ".join(f"{k} {v['accuracy']:.1%} / think {v['think_rate']:.1%}"
                      for k, v in {**figures["by_difficulty"], **figures["by_task"]}.items())
    return f"held-out {key}: accuracy {o['accuracy']:.1%}, think {o['think_rate']:.1%} ({parts})"


def parse_mode(target: str) -> str:
    from audiothink.formats import parse

    return "think" if parse(target).thinks else "direct"


if __name__ == "__main__":
    from audiothink.plumbing.cli import run_checked

    run_checked("sft", main)
