"""The adaptive-think ablation ladder (Audio-Thinker's Table 1 / Fig. 2) on the embedded toy, on a CPU.

    python bench/toy_ablation.py                 # six rows, ~40 min on 2 cores (~25 min with --jobs 2)
    python bench/toy_ablation.py --rows before c # a subset
    python bench/toy_ablation.py --jobs 2         # two training runs at a time
    python bench/toy_ablation.py -- trainer.max_steps=100   # overrides after -- go to every training run

Rows, all from the same warm start (the committed toy checkpoint), same seed, same GRPO settings and steps:

- before: the warm start itself, no GRPO;
- (a) `reward=accuracy force_mode=direct`: plain GRPO on correctness, every reply prefilled with `<answer>`
  (the "answer directly" prompt: the model cannot think);
- (b) `reward=accuracy force_mode=think`: the same, every reply prefilled with `<think>` (always think);
- (c) `reward=adaptive`: the adaptive think reward (ATAR), the model chooses;
- (d) `reward=adaptive_consistency`: ATAR x (1 + 0.5 consistency) + 0.5 format, rule judge;
- (e) `reward=full`: ATAR + consistency + think quality, rule judge.

Each trained row is then scored on the 300 held-out toy items, greedy, in its own mode (a: forced direct,
b: forced think, others: free choice), with the official MMAU/MMAR string-match rule on the extracted
answer. Columns: accuracy overall / easy / hard; greedy think rate on easy and hard items; mean completion
tokens (the prefill of a forced mode included; overall, easy, hard); think-answer consistency (the share of
thought-out completions whose thought concludes the option they answer, read by the rule judge); the
training run's wall time. Prints one table and writes it (and every figure) as JSON next to the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROWS = {
    "before": None,
    "a": ("accuracy, direct prompt", ["reward=accuracy", "force_mode=direct"], "direct"),
    "b": ("accuracy, always think", ["reward=accuracy", "force_mode=think"], "think"),
    "c": ("adaptive (ATAR)", ["reward=adaptive"], None),
    "d": ("ATAR + consistency", ["reward=adaptive_consistency"], None),
    "e": ("full (rule judge)", ["reward=full"], None),
}


def train(row: str, overrides: list[str], root: Path, quiet: bool = False) -> tuple[Path, float]:
    """Run the training entry point for `row`; returns its run folder and wall time (seconds). ``quiet``: the
    run's console output goes to ``<root>/row_<row>.log`` (rows side by side)."""
    from toy_learning import run_command  # bench/ is the script's folder, on sys.path

    run_dir = root / f"row_{row}"
    cmd = [sys.executable, "-m", "audiothink.train", f"hydra.run.dir={run_dir}", *ROWS[row][1], *overrides]
    return run_dir, run_command(cmd, root / f"row_{row}.log" if quiet else None)


def score_heldout(model_dir: Path, force_mode: str | None, eval_path: Path, batch_size: int = 50) -> dict:
    """Greedy answers to every held-out item in `force_mode`, and the table's figures for them."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from audiothink.scoring import string_match
    from audiothink.data import load_samples
    from audiothink.prompts import training_prompt
    from audiothink.formats import extract_answer, force_prefill, parse
    from audiothink.inference import generate_batch
    from audiothink.judge.rule import consistency
    from audiothink.toy.data import WINDOW_SECONDS

    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = load_samples(eval_path).samples
    prefill = force_prefill(force_mode)
    rows = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            out = generate_batch(model, processor, batch, training_prompt(), max_new_tokens=48,
                                 max_audio_seconds=WINDOW_SECONDS, prefill=prefill)
            lengths = out.output_lengths  # the prefill of a forced mode included
            for s, text, n in zip(batch, out.texts, lengths, strict=True):
                p = parse(text)
                rows.append({"difficulty": s.difficulty, "tokens": n, "thinks": p.thinks,
                             "correct": string_match(s.answer, extract_answer(text), s.choices),
                             "consistent": consistency(p.think, p.answer, list(s.choices)) if p.thinks else None})

    def mean(xs):
        xs = [float(x) for x in xs]
        return sum(xs) / len(xs) if xs else None

    fig = {"n": len(rows)}
    for name, sel in (("", rows), ("_easy", [r for r in rows if r["difficulty"] == "easy"]),
                      ("_hard", [r for r in rows if r["difficulty"] == "hard"])):
        fig[f"acc{name}"] = 100 * mean(r["correct"] for r in sel)
        fig[f"think{name}"] = 100 * mean(r["thinks"] for r in sel)
        fig[f"tokens{name}"] = mean(r["tokens"] for r in sel)
    judged = [r["consistent"] for r in rows if r["consistent"] is not None]
    fig["consistency"] = 100 * mean(judged) if judged else None
    fig["thought_out"] = len(judged)
    return fig


def print_table(results: dict[str, dict]) -> None:
    head = (f"{'row':<30}{'acc':>7}{'easy':>7}{'hard':>7}{'think easy':>12}{'think hard':>12}"
            f"{'tokens':>8}{'easy':>6}{'hard':>6}{'consist.':>10}{'wall s':>8}")
    print("\n" + head)
    print("-" * len(head))
    for row, f in results.items():
        name = "before (warm start)" if row == "before" else f"({row}) {ROWS[row][0]}"
        cons = "-" if f["consistency"] is None else f"{f['consistency']:.1f}%"
        wall = "-" if f.get("wall_s") is None else f"{f['wall_s']:.0f}"
        print(f"{name:<30}{f['acc']:>6.1f}%{f['acc_easy']:>6.1f}%{f['acc_hard']:>6.1f}%{f['think_easy']:>11.1f}%"
              f"{f['think_hard']:>11.1f}%{f['tokens']:>8.1f}{f['tokens_easy']:>6.1f}{f['tokens_hard']:>6.1f}"
              f"{cons:>10}{wall:>8}")


def main(argv: list[str]) -> int:
    from audiothink.toy import TOY_MODEL_DIR
    from audiothink.toy.data import default_root, ensure_toy

    from toy_learning import parse_run_args  # bench/ is the script's folder, on sys.path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args, root = parse_run_args(ap, argv, "toy_ablation_")
    eval_path = ensure_toy(default_root())["eval"]
    results: dict[str, dict] = {}

    def record(row: str, run: tuple[Path, float] | None) -> None:
        if run is None:
            results[row] = {**score_heldout(TOY_MODEL_DIR, None, eval_path), "wall_s": None}
        else:
            results[row] = {**score_heldout(run[0] / "final", ROWS[row][2], eval_path), "wall_s": run[1],
                            "run_dir": str(run[0])}
        print_table({r: results[r] for r in args.rows if r in results})
        (root / "toy_ablation.json").write_text(json.dumps(results, indent=2) + "\n")

    trained = [r for r in args.rows if r != "before"]
    if "before" in args.rows:
        record("before", None)
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = dict(zip(trained, pool.map(lambda r: train(r, args.overrides, root, quiet=True), trained)))
        for row in trained:
            record(row, runs[row])
    else:
        for row in trained:
            record(row, train(row, args.overrides, root))
    print(f"\nrows scored on the {results[args.rows[0]]['n']} held-out toy items (greedy); runs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
