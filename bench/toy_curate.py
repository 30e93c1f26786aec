"""Does `python -m audiothink.curate` find the items a model answers without their audio? Planted on the toy.

    python bench/toy_curate.py                    # 400 items, 100 of them planted; ~4 min on 2 busy cores
    python bench/toy_curate.py --items 200 --planted 0.2 --out /tmp/curate-bench
    python bench/toy_curate.py --out /tmp/curate-sampled -- curate.do_sample=true   # overrides of the curated run

What the toy model can exploit without audio decides what "planted" can mean, so it is measured first, with
the entry point itself, on the toy's held-out split (never the curated items):

1. calibration: curate on the held-out items with silence, the questions as generated, and again with the
   gold answer written into every question ("... the answer is high."). The warm start has only ever seen the
   toy's four fixed questions and choice lists: its silent answer is one word per question (counting: "one",
   pitch: "high", at the time of writing) whatever the choices' order or an answer spelt out in the question
   (the second run's silent accuracy equals the first's). It reads no text cue; what it answers from the text
   alone is the prior its question carries.
2. planting, on that: a planted item is a training item whose gold answer is the silent answer its question
   gets (the calibrated prior of its task), so the model answers it right without the audio; every other item
   of the set has another gold answer, so the text alone does not give it. The set is --items training items,
   a --planted share of them planted, the tasks balanced.
3. curate on the set (the exact command is printed), then: found = planted items listed / planted items;
   false positives = unplanted items listed / unplanted items.

What this shows: the entry point's whole path (data loading, the answers with audio and with silence in every
choice order, the rule, the id list) finds the items whose answer this model gives without listening, and
lists none of the others, on a model whose silent answer is its question's prior. It does not show how well a
text cue is found in a model that reads one (the toy reads none): that needs a model that does, such as
Qwen2-Audio on AVQA or MMAU, where the choice orders also take positional guesses out (a toy answer does not
move with the order).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def curate(train: Path, out: Path, *extra: str) -> tuple[list[dict], list[str], float]:
    """Run the entry point on ``train``; its per-item rows, the listed ids and the wall seconds."""
    cmd = [sys.executable, "-m", "audiothink.curate", "data=jsonl", f"data.train={train}", f"hydra.run.dir={out}",
           "curate.progress=false", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (out / "curate.jsonl").read_text().splitlines()]
    listed = [i for i in (out / "text_answerable.txt").read_text().splitlines() if i and not i.startswith("#")]
    return rows, listed, time.time() - t0


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/audiothink-curate-bench"))
    ap.add_argument("--items", type=int, default=400, help="items in the curated set")
    ap.add_argument("--planted", type=float, default=0.25, help="share of them planted")
    ap.add_argument("--calibrate", type=int, default=60, help="held-out items the prior is measured on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="after --: overrides of the curated run (not the calibration)")
    args = ap.parse_args()
    from audiothink.toy.data import generate_toy

    out = args.out
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: choose another --out")
    pool = generate_toy(out / "toy", n_train=3 * args.items, n_eval=args.calibrate, seed=args.seed)
    toy = out / "toy"

    def rows_of(split):
        rows = [json.loads(line) for line in pool[split].read_text().splitlines()]
        for r in rows:  # absolute audio paths: the sets below live in other folders
            r["audio"] = [str(toy / a) for a in r["audio"]] if isinstance(r["audio"], list) else str(toy / r["audio"])
        return rows

    held_out = rows_of("eval")
    # 1. calibration: the model's silent answer per task, and whether an answer written in the question moves it
    cal, _, t_cal = curate(write_rows(out / "calibration" / "plain.jsonl", held_out), out / "calibration" / "plain",
                           "curate.rotations=1")
    cued = [{**r, "question": f"{r['question']} the answer is {r['answer']}."} for r in held_out]
    cue, _, t_cue = curate(write_rows(out / "calibration" / "cue.jsonl", cued), out / "calibration" / "cue",
                           "curate.rotations=1")
    prior, silent_acc = {}, {}
    for name, rows in (("plain", cal), ("answer in the question", cue)):
        silent_acc[name] = sum(r["without_audio"][0]["right"] for r in rows) / len(rows)
    for task in sorted({r["task"] for r in cal}):
        said = Counter(r["without_audio"][0]["prediction"] for r in cal if r["task"] == task)
        word, n = said.most_common(1)[0]
        prior[task] = {"answer": word, "share": n / sum(said.values())}
    print("silent answer per task (held-out):", json.dumps(prior))
    print("silent accuracy, questions as generated: %.3f; with the answer in the question: %.3f"
          % (silent_acc["plain"], silent_acc["answer in the question"]))

    # 2. the set: per task, a planted share whose gold is the task's silent answer, the rest another gold
    rng = random.Random(args.seed)
    train = rows_of("train")
    tasks = sorted(prior)
    per_task = args.items // len(tasks)
    n_planted = round(per_task * args.planted)
    chosen, planted = [], set()
    for task in tasks:
        rows = [r for r in train if r["task"] == task]
        rng.shuffle(rows)
        yes = [r for r in rows if r["answer"] == prior[task]["answer"]][:n_planted]
        no = [r for r in rows if r["answer"] != prior[task]["answer"]][: per_task - n_planted]
        if len(yes) < n_planted or len(no) < per_task - n_planted:
            sys.exit(f"the pool has too few {task} items for --items {args.items}")
        chosen += yes + no
        planted |= {r["id"] for r in yes}
    rng.shuffle(chosen)
    curated = write_rows(out / "set" / "train.jsonl", chosen)
    (out / "set" / "planted.txt").write_text("".join(f"{i}\n" for i in sorted(planted)))

    # 3. curate, then found and false positives
    rows, listed, wall = curate(curated, out / "curate", *args.overrides)
    listed_set = set(listed)
    unplanted = {r["id"] for r in chosen} - planted
    found = len(planted & listed_set) / len(planted)
    false_pos = len(listed_set - planted) / len(unplanted)
    by_task = {t: {"planted": sum(r["id"] in planted for r in chosen if r["task"] == t),
                   "found": sum(r["id"] in planted and r["id"] in listed_set for r in chosen if r["task"] == t),
                   "false_positives": sum(r["id"] in listed_set and r["id"] not in planted
                                          for r in chosen if r["task"] == t)} for t in tasks}
    result = {"items": len(chosen), "planted": len(planted), "listed": len(listed_set), "found": found,
              "false_positive_rate": false_pos, "by_task": by_task, "prior": prior, "silent_accuracy": silent_acc,
              "wall_s": {"calibration": round(t_cal + t_cue, 1), "curate": round(wall, 1)},
              "command": " ".join(["python -m audiothink.curate data=jsonl", f"data.train={curated}",
                                   f"hydra.run.dir={out / 'curate'}", *args.overrides])}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nplanted {len(planted)} of {len(chosen)} items; listed {len(listed_set)}: found {100 * found:.1f}% of "
          f"the planted, false positives {100 * false_pos:.1f}% of the {len(unplanted)} others "
          f"(curate {wall:.0f} s, calibration {t_cal + t_cue:.0f} s)")
    print(json.dumps(by_task))


if __name__ == "__main__":
    main()
