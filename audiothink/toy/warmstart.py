"""Build the embedded toy checkpoint: tokenizer, processor, and a short supervised warm start.

    python -m audiothink.toy.warmstart            # writes audiothink/toy/assets/model (a few MB)

Why a warm start: GRPO only reinforces what the policy already samples. A random model never emits
`<answer>…</answer>`, so every reward is equal and there is no gradient. The warm start teaches the two
output formats (half the targets think, half answer directly) and gives the model *some* ear for the
tasks, on purpose briefly: it must start above chance but far from perfect, so that the default GRPO run
has something to improve and `bench/toy_learning.py` can show it.

Deterministic for a given seed on a given torch build; the committed checkpoint is the output of the
defaults below.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from audiothink.audio import SAMPLE_RATE, load_audio
from audiothink.data import Sample, load_samples, render_prompt
from audiothink.formats import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from audiothink.toy.data import WINDOW_SECONDS, ensure_toy
from audiothink.toy.model import CHAT_TEMPLATE, build_model, build_processor, build_tokenizer

ASSETS = Path(__file__).parent / "assets" / "model"


def default_prompt() -> str:
    """The training prompt, read from configs/train.yaml so that warm start and GRPO see the same text."""
    import yaml  # shipped with hydra's omegaconf

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "train.yaml").read_text())
    return cfg["prompt"]


def target(sample: Sample, think: bool) -> str:
    answer = f"{ANSWER_OPEN}{sample.answer}{ANSWER_CLOSE}"
    if not think:
        return answer
    return f"{THINK_OPEN}{sample.extra.get('rationale', '')}{THINK_CLOSE}{answer}"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "audiothink" / "toy")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0, help="print held-out greedy accuracy every N steps")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    paths = ensure_toy(args.data)
    samples = load_samples(paths["train"]).samples
    prompt = default_prompt()

    corpus = [render_prompt(s, prompt) for s in samples] + [target(s, True) for s in samples]
    corpus += [CHAT_TEMPLATE] * 4
    tokenizer = build_tokenizer(corpus)
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, seed=args.seed, hidden=args.hidden, layers=args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy model: {n_params / 1e6:.2f} M parameters, vocab {len(tokenizer)}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        batch = rng.sample(samples, args.batch_size)
        think = [rng.random() < 0.5 for _ in batch]
        loss = _sft_loss(model, processor, batch, prompt, think)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f}s)")
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == args.steps - 1):
            print(f"step {step + 1:4d}  held-out {_heldout(model, processor, paths['eval'], prompt)}")
            model.train()

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    recipe = {k: v for k, v in vars(args).items() if k not in ("out", "data", "eval_every")}
    recipe["torch"] = torch.__version__
    (args.out / "warmstart.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved toy checkpoint to {args.out}")
    return args.out


def _heldout(model, processor, eval_path: Path, prompt: str, n: int = 200) -> str:
    from audiothink.inference import generate_answers, score

    samples = load_samples(eval_path).samples[:n]
    outputs = generate_answers(model, processor, samples, prompt, batch_size=50, max_new_tokens=48,
                               max_audio_seconds=WINDOW_SECONDS)
    result = score(samples, outputs)
    tasks = " ".join(f"{k} {v['accuracy']:.0%}" for k, v in result["by_task"].items())
    o = result["overall"]
    return f"accuracy {o['accuracy']:.1%} ({tasks}) think {o['think_rate']:.0%} malformed {o['format_failure_rate']:.0%}"


def _sft_loss(model, processor, batch: list[Sample], prompt: str, think: list[bool]) -> torch.Tensor:
    tok = processor.tokenizer
    waves, texts, targets = [], [], []
    for s, t in zip(batch, think, strict=True):
        waves.extend(load_audio(p, max_seconds=WINDOW_SECONDS)[0] for p in s.audio)
        content = [{"type": "audio"}] * len(s.audio) + [{"type": "text", "text": render_prompt(s, prompt)}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                   add_generation_prompt=True))
        targets.append(target(s, t) + tok.eos_token)
    enc = processor(text=texts, audio=waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    # Append targets on the right of the (left-padded) prompts; supervise the target tokens only.
    tgt = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
    width = max(len(t) for t in tgt)
    ids = torch.full((len(batch), width), tok.pad_token_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, t in enumerate(tgt):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    input_ids = torch.cat([enc["input_ids"], ids], dim=1)
    attention = torch.cat([enc["attention_mask"], mask], dim=1)
    labels = input_ids.masked_fill(attention == 0, -100)
    labels[:, : enc["input_ids"].size(1)] = -100
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        input_features=enc["input_features"],
        feature_attention_mask=enc["feature_attention_mask"],
        labels=labels,
    )
    return out.loss


if __name__ == "__main__":
    main()
