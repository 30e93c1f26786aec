"""How a toy checkpoint thinks, before any training: inconsistent thoughts and invalid chains on the held-out items.

    python bench/toy_chains.py                      # the committed warm start, ~5 min on 2 loaded cores
    python bench/toy_chains.py --model runs/x/final # any toy checkpoint
    python bench/toy_chains.py --samples 4          # fewer sampled completions per item

Three ways of answering the 300 held-out toy items:

- sampled: free choice, sampled as the rollouts sample (the default config's ``trainer.temperature``, no top-p /
  top-k), ``--samples`` completions per item (the default config's G): what GRPO starts from;
- greedy: free choice, greedy, as the held-out scoring and the ablation's rows answer;
- greedy, forced think: every reply prefilled with ``<think>``, greedy: the chains themselves, on every item.

For each, per difficulty, on the thought-out completions (:func:`audiothink.think_metrics.chain_metrics`): the share
of inconsistent thoughts (the thought concludes another option than the answer: the rule judge's consistency), the
share of invalid chains (the toy logic judge, ``audiothink/judge/toy_logic.py``: a wrong hop, a fact of the wrong
clip, a skipped fact, a conclusion that does not follow, or text outside the chain language), and, of the correct
thought-out answers, the share reached through an invalid chain. Prints one table; ``--out`` writes the figures
as JSON. Deterministic (one CPU thread, seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAYS = {"sampled": (True, None), "greedy": (False, None), "greedy, forced think": (False, "think")}


def measure(model_dir: Path, eval_path: Path, *, do_sample: bool, temperature: float, samples: int,
            force_mode: str | None, seed: int = 0, batch_size: int = 48) -> dict:
    """Chain figures of ``model_dir`` on the items of ``eval_path`` answered one way (module doc).

    Returns ``{"overall" | "easy" | "hard": {"completions", "thought_out", "correct_thought_out", "think_rate", and
    chain_metrics' shares (in [0, 1]; absent without rows)}}``.
    """
    import torch
    import transformers
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from audiothink.data import load_samples
    from audiothink.formats import force_prefill, parse
    from audiothink.inference import generate_batch
    from audiothink.prompts import training_prompt
    from audiothink.scoring import is_correct
    from audiothink.think_metrics import chain_metrics
    from audiothink.toy.data import WINDOW_SECONDS

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    transformers.utils.logging.disable_progress_bar()  # the weight-loading bar, in a captured log
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    items = [s for s in load_samples(eval_path).samples for _ in range(samples if do_sample else 1)]
    texts = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            out = generate_batch(model, processor, items[start : start + batch_size], training_prompt(),
                                 max_new_tokens=48, max_audio_seconds=WINDOW_SECONDS, do_sample=do_sample,
                                 temperature=temperature, prefill=force_prefill(force_mode))
            texts += out.texts  # the prefill of a forced mode included, as the rewards read it
    columns = {"question": [s.question for s in items], "choices": [list(s.choices) for s in items],
               "answer": [s.answer for s in items], "difficulty": [s.difficulty for s in items]}
    shares = chain_metrics(texts, columns)
    figures = {}
    for d in ("overall", "easy", "hard"):
        idx = [i for i, s in enumerate(items) if d == "overall" or s.difficulty == d]
        thought = [i for i in idx if parse(texts[i]).thinks]
        suffix = "" if d == "overall" else f"/{d}"
        figures[d] = {
            "completions": len(idx), "thought_out": len(thought),
            "correct_thought_out": sum(bool(is_correct(texts[i], items[i].answer, items[i].choices)) for i in thought),
            "think_rate": len(thought) / len(idx),
            **{k.split("/")[1]: v for k, v in shares.items() if k.endswith(suffix) and k.count("/") == 1 + bool(suffix)},
        }
    return figures


def print_table(results: dict[str, dict]) -> None:
    head = (f"{'answered':<22}{'slice':>7}{'':>2}{'think':>7}{'thought':>9}{'inconsistent':>14}{'invalid':>9}"
            f"{'correct':>9}{'of which invalid':>18}")
    print("\n" + head + "\n" + "-" * len(head))
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for way, by in results.items():
        for d, f in by.items():
            print(f"{way if d == 'overall' else '':<22}{d:>7}{'':>2}{pct(f['think_rate']):>7}{f['thought_out']:>9}"
                  f"{pct(f.get('inconsistent_share')):>14}{pct(f.get('invalid_chain_share')):>9}"
                  f"{f['correct_thought_out']:>9}{pct(f.get('invalid_correct_share')):>18}")


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from audiothink.toy import TOY_MODEL_DIR
    from audiothink.toy.data import default_root, ensure_toy

    trainer = OmegaConf.load(REPO / "configs" / "trainer" / "toy.yaml")  # what the default run's rollouts use
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=TOY_MODEL_DIR, help="toy checkpoint (default: the warm start)")
    ap.add_argument("--samples", type=int, default=int(trainer.num_generations),
                    help="sampled completions per item (default: the default config's G)")
    ap.add_argument("--temperature", type=float, default=float(trainer.temperature),
                    help="sampling temperature (default: the default config's rollouts')")
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    eval_path = ensure_toy(default_root())["eval"]
    results = {}
    for way in args.ways:
        do_sample, force_mode = WAYS[way]
        results[way] = measure(args.model, eval_path, do_sample=do_sample, temperature=args.temperature,
                               samples=args.samples, force_mode=force_mode, seed=args.seed)
        print_table(results)
    if args.out:
        model = args.model.resolve()
        meta = {"model": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
                "eval": "the toy's held-out split (300 items)", "temperature": args.temperature, "samples": args.samples, "seed": args.seed}
        args.out.write_text(json.dumps({"settings": meta, "figures": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
