"""Build the embedded toy checkpoint: tokenizer, processor, and a supervised warm start.

    python -m audiothink.toy.warmstart            # writes audiothink/toy/assets/model (2.2 MB, ~4 min on 1 core)

Why a warm start: GRPO only reinforces what the policy already samples. A random model never emits
`<answer>…</answer>`, so every reward is equal and there is no gradient.

What it teaches (toy v3, `audiothink/toy/data.py`): both output formats on every task, the think targets
being each item's correct stepwise thought ("first two, so third, third three, so three"). A fixed share of
targets (`--think-share`, 0.4) is thought out, decided by a random stream of its own, independent of the
item: task, difficulty and answer do not enter the choice (`think_flags`), so whatever link between
difficulty and mode the model shows after GRPO is GRPO's doing. The share is below one half, so greedy
decoding answers directly everywhere before GRPO, while sampled rollouts still think often enough to
explore. With the defaults the warm start perceives each clip near perfectly and its thoughts reach the
answer (forced to think: ~100 % held-out), but its direct answers to the hard items stay near chance (43 %;
chance 33 %): the pointer-following is not learnt in one forward pass within this budget, while written
down it is two easy steps.

Mistakes, on request (``--inconsistent-share``, ``--invalid-share``; both 0 by default, and the committed checkpoint
is trained without them): the two hacks the judge rewards exist for (issue 21), planted in the thought-out targets
at a stated rate, each by a Bernoulli stream of its own that, like the think flags, sees no item (:func:`mistakes`):

- an **inconsistent** target thinks a *valid* chain from a misheard fact (another value of the task: the easy
  item's fact, or the fact of the clip the hard item's pointer leads to), which therefore concludes another
  option, while the answer stays the gold one: ``<think>first one, so one</think><answer>two</answer>``;
- an **invalid** target reaches the gold option through an invalid step: a skipped fact (``first two, so third,
  so three``; easy: ``so two``), the fact of another clip than the hop's (``first two, so third, second three,
  so three``) or, easy, a conclusion that does not follow (``first one, so two``). The logic judge
  (``audiothink/judge/toy_logic.py``) rejects each, the rule judge's consistency accepts it;
- both on one target: the misheard chain's conclusion reached through an invalid step (thought and answer
  still disagree).

``--inconsistent-kind slip`` plants the other inconsistency instead: the chain hears every fact right and then
states another option as its conclusion (``first two, so two`` becomes ``first two, so one``; hard: ``..., third
one, so three``) while the answer stays gold, the paper's ``… the final answer is 1</think><answer>2</answer>``.
The gold answer then stands written in the thought (the last fact), so the answer can be right whatever the
conclusion says and accuracy alone does not select against the slip, as it does against a misheard fact (the
answer copying the thought's conclusion is right less often after one: bench/RESULTS.md, issue 21). The logic
judge rejects a slip too (its conclusion does not follow); with ``invalid`` on the same target it is the
misheard kind's "both".

``--invalid-kind skip`` plants one invalid step only, the skipped fact (hard: ``first two, so third, so three``;
easy: ``so two``). On the hard items the answer then has to read the hopped-to clip in one forward pass, which the
tiny model does not learn: a warm start with 60 % of its thought-out targets skipped (``--think-share 1.0
--invalid-share 0.6``) thinks skipped chains greedy on every item and answers 36-41 % of the hard items right
(seeds 0, 1; chance 33 %), so accuracy selects against a skipped fact (bench/RESULTS.md, issue 21).
``--invalid-kind misattributed`` plants the other steps only: the hop's fact given to another clip (``first two, so
third, second three, so three``) and, easy, a conclusion that does not follow from the fact (``first one, so
two``): the hopped-to clip's value stays written in the chain, so the answer can copy it and accuracy alone need
not select against the invalid chain, only a judge of the chain; but the tiny model, once it has written another
clip's name, often reads that clip (bench/RESULTS.md).
``--invalid-kind extra`` keeps the valid chain and adds one fact before the conclusion: the conclusion's value said
of a clip the rule does not visit (``first two, so third, third one, second one, so one``; easy: ``first two,
second two, so two``), an unsupported step whose value agrees, so that the last fact is still the value the
answer copies; GRPO mostly drops them anyway within ~30 steps (bench/RESULTS.md, issue 21). With the default ``mixed``
(all four steps), the answer after an invalid chain is right less often than after a valid one (82 % vs 98.6 % of
the consistent thought-out completions of GRPO's first 100 steps: bench/RESULTS.md, issue 21), so accuracy alone
removes part of them.

With both shares at 0 every target is exactly the correct one, and ``warmstart.json`` records the shares only
when one is not 0, and each kind only when it is not its default and its share is not 0 (so that the defaults
still write the committed recipe byte for byte).

The training items (a fixed set of `--items` 2,000, cycled) come from the toy generator's own `warmstart`
stream, never the train or eval split, so the warm start does not memorise the items GRPO trains on.

Deterministic on one machine: single-threaded float32 on CPU, seeded. The committed checkpoint was built with
the defaults below (`warmstart.json` records them and the torch version) in an earlier session; rerun on the
project's machine on 2026-12-01 they give other weights (max |delta| 0.16; two code versions agree exactly),
whose direct answers to the hard items are right 80.7 % of the time, not 43 % (held-out, forced direct; forced
think 96.7 %). The near-chance direct answers are the committed weights' property, not the recipe's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from audiothink.data import Sample, render_prompt
from audiothink.prompts import training_prompt
from audiothink.formats import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from audiothink.sft import encode_replies, sft_loss, train_steps
from audiothink.toy.data import DIFFICULTY, ORDINALS, ToyItem, task_values, toy_items
from audiothink.toy.model import CHAT_TEMPLATE, build_model, build_processor, build_tokenizer

ASSETS = Path(__file__).parent / "assets" / "model"
# Items whose prompts and targets train the tokenizer (enough to contain every word the generator uses).
TOKENIZER_ITEMS = 2000


def as_sample(item: ToyItem, index: int = 0) -> Sample:
    """The project's Sample for an in-memory item (clips stay in memory: ``audio`` only names them)."""
    return Sample(id=f"toy-warmstart-{index:06d}", audio=tuple(f"<clip {k}>" for k in range(len(item.clips))),
                  question=item.question, choices=item.choices, answer=item.answer, task=item.task,
                  category=item.category, difficulty=item.difficulty, extra={"rationale": item.rationale})


class Mistake(NamedTuple):
    """The mistakes planted in one target (module doc): ``inconsistent`` and ``invalid`` flags, and two draws of
    a stream of their own that pick which misheard (or slipped-to) value (``mishear``, in [0, 4): its parity) and
    which invalid step (``variant``, in [0, 4); 4 or 5: the ``extra`` kind's added fact); the draws matter only
    where a flag is set. ``slip``: which kind of inconsistency (``--inconsistent-kind``)."""

    inconsistent: bool
    invalid: bool
    mishear: int = 0
    variant: int = 0
    slip: bool = False  # the inconsistency is a slipped conclusion after right facts, not a misheard fact


NO_MISTAKE = Mistake(False, False)
# Seed constants of the mistake streams: each its own, and none the think flags' (0x7417) or the item order's.
_INCONSISTENT_STREAM, _INVALID_STREAM, _PICK_STREAM = 0x1C0E, 0x1BAD, 0x91C4


def target(item: ToyItem | Sample, think: bool, mistake: Mistake = NO_MISTAKE) -> str:
    """The supervised reply: ``<think>rationale</think><answer>gold</answer>`` or ``<answer>gold</answer>``.

    ``mistake`` (thought-out targets only; a direct target ignores it): the thought is :func:`mistaken_chain`
    instead of the rationale, the answer stays gold. Raises TypeError for a mistake on a Sample (its facts are
    not known).
    """
    answer = f"{ANSWER_OPEN}{item.answer}{ANSWER_CLOSE}"
    if not think:
        return answer
    if mistake.inconsistent or mistake.invalid:
        if not isinstance(item, ToyItem):
            raise TypeError("a mistaken target needs the toy item's facts (a ToyItem)")
        return f"{THINK_OPEN}{mistaken_chain(item, mistake)}{THINK_CLOSE}{answer}"
    rationale = item.rationale if isinstance(item, ToyItem) else item.extra.get("rationale", "")
    return f"{THINK_OPEN}{rationale}{THINK_CLOSE}{answer}"


def mistaken_chain(item: ToyItem, mistake: Mistake) -> str:
    """The thought of a mistaken target (module doc), in the chain language of ``audiothink/toy/data.py``.

    Inconsistent: the valid chain from a misheard fact, concluding another option than ``item.answer`` (easy:
    the clip's fact; hard: the fact of the clip the pointer leads to; ``mishear % 2`` picks which of the two
    other values). Invalid: the chain's conclusion (gold, or the misheard one) reached through an invalid step,
    ``variant % 2`` picks which (hard: a skipped fact / the fact of another clip, ``variant // 2`` picks which;
    easy: no fact / a conclusion that does not follow from a misheard fact); ``variant`` 4 or 5 (``extra``): the
    valid chain with one more fact before the conclusion, the conclusion's value said of a clip the rule does not
    visit (``variant % 2`` picks which), so that the value the answer copies is written twice.

    >>> from audiothink.toy.data import toy_items
    >>> item = next(it for it in toy_items("warmstart", 40) if it.facts == ("two", "two", "one", "three"))
    >>> item.rationale
    'first two, so third, third one, so one'
    >>> mistaken_chain(item, Mistake(True, False, mishear=1))  # the third clip's fact misheard as three
    'first two, so third, third three, so three'
    >>> mistaken_chain(item, Mistake(False, True, variant=0))  # a skipped fact
    'first two, so third, so one'
    >>> mistaken_chain(item, Mistake(True, True, mishear=0, variant=1))  # misheard, and said of another clip
    'first two, so third, second two, so two'
    >>> mistaken_chain(item, Mistake(True, False, mishear=1, slip=True))  # right facts, a slipped conclusion
    'first two, so third, third one, so three'
    """
    values = task_values(item.task)
    gold = item.answer
    others = lambda v: [x for x in values if x != v]  # noqa: E731 (the two values that are not v, in order)
    slipped = mistake.inconsistent and mistake.slip and not mistake.invalid  # right facts, another conclusion
    if DIFFICULTY[item.task] == "easy":
        heard = others(gold)[mistake.mishear % 2] if mistake.inconsistent else gold
        if slipped:
            return f"first {gold}, so {heard}"
        if not mistake.invalid:
            return f"first {heard}, so {heard}"
        if mistake.variant >= 4:  # an extra fact: a clip an easy item does not have
            return f"first {heard}, {ORDINALS[1 + mistake.variant % 2]} {heard}, so {heard}"
        if mistake.variant % 2 == 0:
            return f"so {heard}"  # the conclusion without its fact
        return f"first {others(heard)[mistake.variant // 2 % 2]}, so {heard}"  # does not follow from the fact
    # hard: the pointer and the hop stay right, so that the gold answer is the hopped-to clip's fact, which
    # the answer can read off that clip: a mistake whose gold answer needs the hop done in one forward pass (a
    # misheard pointer, a lucky hop to the wrong clip) teaches the direct answer the hop, and then the hard items
    # no longer need a thought (seed 0: direct accuracy on hard items 43 % -> 98 %, bench/RESULTS.md)
    pointer = item.facts[0]
    hop = ORDINALS[1 + values.index(pointer)]
    heard = others(gold)[mistake.mishear % 2] if mistake.inconsistent else gold  # the hopped-to clip's fact
    if slipped:
        return f"first {pointer}, so {hop}, {hop} {gold}, so {heard}"
    if not mistake.invalid:
        return f"first {pointer}, so {hop}, {hop} {heard}, so {heard}"
    if mistake.variant >= 4:  # an extra fact, of a clip the hop did not go to
        extra = [c for c in ORDINALS[1:] if c != hop][mistake.variant % 2]
        return f"first {pointer}, so {hop}, {hop} {heard}, {extra} {heard}, so {heard}"
    if mistake.variant % 2 == 0:
        return f"first {pointer}, so {hop}, so {heard}"  # a skipped fact
    wrong = [c for c in ORDINALS[1:] if c != hop][mistake.variant // 2 % 2]
    return f"first {pointer}, so {hop}, {wrong} {heard}, so {heard}"  # the fact of another clip than the hop's


def think_flags(n: int, share: float, seed: int) -> list[bool]:
    """Which of ``n`` targets are thought out: a Bernoulli(``share``) stream of its own, seeded by ``seed``.

    It sees no item: the mode of a target is independent of its task, difficulty and answer by construction.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"think share must be in [0, 1], got {share}")
    return (np.random.default_rng([seed, 0x7417]).random(n) < share).tolist()


INCONSISTENT_KINDS = ("misheard", "slip")
INVALID_KINDS = ("mixed", "skip", "misattributed", "extra")


def mistakes(n: int, inconsistent_share: float, invalid_share: float, seed: int,
             inconsistent_kind: str = "misheard", invalid_kind: str = "mixed") -> list[Mistake]:
    """The mistakes of ``n`` targets, by position: two Bernoulli streams of their own (``inconsistent_share``,
    ``invalid_share``), independent of each other and of the think flags, and the picks' stream; like
    :func:`think_flags` they see no item. ``inconsistent_kind``: ``"misheard"`` or ``"slip"``; ``invalid_kind``:
    ``"mixed"`` (the four invalid steps, by the ``variant`` draw), ``"skip"`` (the skipped fact only: ``variant``
    0), ``"misattributed"`` (a fact given to the wrong clip or conclusion only: ``variant`` 1 or 3, the same
    ``variant // 2`` draw) or ``"extra"`` (a fact added before the conclusion: ``variant`` 4 or 5, by the same
    ``variant // 2`` draw) (module doc; the flags are drawn the same for every kind). Raises ValueError for a
    share outside [0, 1] or another kind."""
    for name, share in (("inconsistent", inconsistent_share), ("invalid", invalid_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} share must be in [0, 1], got {share}")
    if inconsistent_kind not in INCONSISTENT_KINDS:
        raise ValueError(f"inconsistent kind must be one of {INCONSISTENT_KINDS}, got {inconsistent_kind!r}")
    if invalid_kind not in INVALID_KINDS:
        raise ValueError(f"invalid kind must be one of {INVALID_KINDS}, got {invalid_kind!r}")
    slip = inconsistent_kind == "slip"
    inconsistent = np.random.default_rng([seed, _INCONSISTENT_STREAM]).random(n) < inconsistent_share
    invalid = np.random.default_rng([seed, _INVALID_STREAM]).random(n) < invalid_share
    picks = np.random.default_rng([seed, _PICK_STREAM]).integers(0, 4, size=(n, 2))
    if invalid_kind == "skip":  # variant 0: the skipped fact, on easy and hard items alike (mistaken_chain)
        picks[:, 1] = 0
    elif invalid_kind == "misattributed":  # odd variants: another clip's label (hard), a non-following fact (easy)
        picks[:, 1] = picks[:, 1] // 2 * 2 + 1
    elif invalid_kind == "extra":  # the conclusion's value said once more, of a clip off the chain
        picks[:, 1] = 4 + picks[:, 1] // 2
    return [Mistake(bool(a), bool(b), int(m), int(v), slip) for a, b, (m, v) in zip(inconsistent, invalid, picks)]


def warmstart_batches(steps: int, batch_size: int, think_share: float, seed: int, items: int = 0
                      ) -> Iterator[list[tuple[ToyItem, bool]]]:
    """The warm start's training batches: ``steps`` lists of ``batch_size`` (item, think) pairs.

    Items come from the toy generator's ``warmstart`` stream: with ``items=0`` each target gets a new item;
    otherwise the first ``items`` items of the stream form a fixed set, visited in a fresh random order each
    epoch. Think flags are :func:`think_flags`, zipped on by position.
    """
    n = steps * batch_size
    flags = think_flags(n, think_share, seed)
    stream = _item_stream(n, items, seed)
    for step in range(steps):
        yield [(next(stream)[1], flags[step * batch_size + j]) for j in range(batch_size)]


def _item_stream(n: int, items: int, seed: int) -> Iterator[tuple[int, ToyItem]]:
    """(index, item) of the ``n`` training targets' items: an index into the fixed set of ``items`` (or the
    stream position with ``items=0``)."""
    if items:
        pool = list(toy_items("warmstart", items, seed))
        order = np.random.default_rng([seed, 0x17E5])
        return ((int(i), pool[int(i)]) for _ in range(-(-n // items)) for i in order.permutation(items))
    return enumerate(toy_items("warmstart", n, seed))


def write_sft_rows(out: Path, args: argparse.Namespace, tokenizer, processor) -> Path:
    """The warm start as SFT rows for ``python -m audiothink.sft``: ``out/train.jsonl`` (one row per training
    target, in training order: the unified schema plus ``target``), the clips in ``out/audio/`` (16-bit WAVs,
    as the toy set's), and ``out/init/``, the untrained model (this tokenizer, the seeded initial weights); builds the
    toy set too (:func:`audiothink.toy.data.ensure_toy`), whose train split validates the SFT runs."""
    from audiothink.toy.data import SOURCE, default_root, ensure_toy, write_wav

    toy = ensure_toy(default_root())  # the toy set: its train split is the SFT runs' validation items (README)
    n = args.steps * args.batch_size
    flags = think_flags(n, args.think_share, args.seed)
    planted = mistakes(n, args.inconsistent_share, args.invalid_share, args.seed, args.inconsistent_kind,
                       args.invalid_kind)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    written: set[int] = set()
    with open(out / "train.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for k, ((i, item), think, mistake) in enumerate(zip(_item_stream(n, args.items, args.seed), flags, planted)):
            names = [f"audio/ws-{i:05d}-{c + 1}.wav" for c in range(len(item.clips))]
            if i not in written:
                for name, clip in zip(names, item.clips, strict=True):
                    write_wav(out / name, clip)
                written.add(i)
            row = {"id": f"toy-warmstart-{k:06d}", "audio": names, "question": item.question,
                   "choices": list(item.choices), "answer": item.answer, "task": item.task,
                   "category": item.category, "difficulty": item.difficulty, "source": SOURCE,
                   "rationale": item.rationale, "target": target(item, think, mistake)}
            f.write(json.dumps(row) + "\n")
    model = build_model(tokenizer, seed=args.seed, hidden=args.hidden, layers=args.layers, heads=args.heads)
    model.save_pretrained(out / "init", safe_serialization=True)
    processor.save_pretrained(out / "init")
    print(f"wrote {n} SFT rows ({len(written)} items) to {out / 'train.jsonl'} and the untrained model to "
          f"{out / 'init'}; train it with: python -m audiothink.sft model.path={out / 'init'} data=jsonl "
          f"data.train={out / 'train.jsonl'} data.eval={toy['train']} sft.shuffle=false", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m audiothink.toy.warmstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, constant, linear decay)")
    ap.add_argument("--decay-from", type=float, default=0.75, help="share of the steps after which lr decays to 0")
    ap.add_argument("--think-share", type=float, default=0.4, help="share of thought-out targets")
    ap.add_argument("--inconsistent-share", type=float, default=0.0,
                    help="share of thought-out targets whose thought concludes another option than the (gold) "
                         "answer (how: --inconsistent-kind)")
    ap.add_argument("--inconsistent-kind", choices=INCONSISTENT_KINDS, default="misheard",
                    help="misheard: a valid chain from a misheard fact; slip: right facts, then another option "
                         "stated as the conclusion (module doc)")
    ap.add_argument("--invalid-share", type=float, default=0.0,
                    help="share of thought-out targets whose chain reaches the gold option through an invalid step "
                         "(which: --invalid-kind)")
    ap.add_argument("--invalid-kind", choices=INVALID_KINDS, default="mixed",
                    help="mixed: four invalid steps (a skipped fact, another clip's fact, no fact, a conclusion that "
                         "does not follow); skip: a skipped fact (hard) or no fact (easy) only; misattributed: "
                         "another clip's fact (hard) or a conclusion that does not follow (easy) only, which keep "
                         "the answer's value written in the chain; extra: the valid chain and one more fact before "
                         "the conclusion, of a clip the rule does not visit, stating the conclusion's value (module "
                         "doc)")
    ap.add_argument("--items", type=int, default=2000, help="size of the fixed training set (0: a new item per target)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4, help="attention heads per decoder layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-rows", type=Path, default=None, metavar="DIR",
                    help="write the warm start as rows for python -m audiothink.sft (and the untrained model) "
                         "into DIR instead of training")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="every N steps, print held-out greedy accuracy with each mode forced (toy eval split)")
    args = ap.parse_args(argv)

    mistakes(0, args.inconsistent_share, args.invalid_share, args.seed, args.inconsistent_kind,  # fail before work
             args.invalid_kind)
    torch.set_num_threads(1)  # one thread: the same float32 sums on any machine
    torch.manual_seed(args.seed)
    prompt = training_prompt()
    vocab_items = [as_sample(it) for it in toy_items("warmstart", TOKENIZER_ITEMS, args.seed + 1)]
    corpus = [render_prompt(s, prompt) for s in vocab_items] + [target(s, True) for s in vocab_items]
    corpus += [CHAT_TEMPLATE] * 4
    tokenizer = build_tokenizer(corpus)
    processor = build_processor(tokenizer)
    if args.sft_rows is not None:
        return write_sft_rows(args.sft_rows, args, tokenizer, processor)
    model = build_model(tokenizer, seed=args.seed, hidden=args.hidden, layers=args.layers, heads=args.heads)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy model: {n_params / 1e6:.2f} M parameters, vocab {len(tokenizer)}", flush=True)

    t0 = time.time()

    def on_step(step: int, losses: list[float]) -> None:
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {np.mean(losses[-100:]):.3f}  ({time.time() - t0:.0f}s)", flush=True)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == args.steps - 1):
            print(f"step {step + 1:5d}  held-out {heldout(model, processor, prompt)}", flush=True)
            model.train()

    # audiothink.sft's loop and loss: one micro-batch a step, warm-up 50 steps, constant, linear decay
    planted = mistakes(args.steps * args.batch_size, args.inconsistent_share, args.invalid_share, args.seed,
                       args.inconsistent_kind, args.invalid_kind)
    batches = ([warmstart_inputs(processor, [it for it, _ in batch], prompt, [t for _, t in batch],
                                 planted[step * args.batch_size : (step + 1) * args.batch_size])]
               for step, batch in enumerate(warmstart_batches(args.steps, args.batch_size, args.think_share,
                                                              args.seed, args.items)))
    train_steps(model, batches, sft_loss, steps=args.steps, learning_rate=args.lr, warmup_steps=50,
                decay_from=args.decay_from, weight_decay=0.0, max_grad_norm=1.0, on_step=on_step)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    recipe = {k: v for k, v in vars(args).items() if k not in ("out", "eval_every", "sft_rows")}
    for k in ("inconsistent_share", "invalid_share"):  # absent when 0: the defaults write the committed recipe
        if not recipe[k]:
            del recipe[k]
    if recipe["inconsistent_kind"] == "misheard" or "inconsistent_share" not in recipe:  # likewise the kind
        del recipe["inconsistent_kind"]
    if recipe["invalid_kind"] == "mixed" or "invalid_share" not in recipe:
        del recipe["invalid_kind"]
    recipe["torch"] = torch.__version__
    (args.out / "warmstart.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved toy checkpoint to {args.out} ({time.time() - t0:.0f}s)")
    return args.out


def heldout(model, processor, prompt: str, n: int = 300) -> str:
    """Greedy accuracy on the toy eval split with each mode forced, by difficulty and task (the default data root),
    scored as the held-out summary scores (audiothink.inference.score)."""
    from audiothink.data import load_samples
    from audiothink.formats import force_prefill
    from audiothink.inference import generate_answers, score
    from audiothink.toy.data import WINDOW_SECONDS, default_root, ensure_toy

    samples = load_samples(ensure_toy(default_root())["eval"]).samples[:n]
    parts = []
    for mode in ("direct", "think"):
        outputs = generate_answers(model, processor, samples, prompt, batch_size=50, max_new_tokens=48,
                                   max_audio_seconds=WINDOW_SECONDS, prefill=force_prefill(mode))
        figures = score(samples, outputs)
        slices = {**figures["by_difficulty"], **figures["by_task"]}
        parts.append(f"{mode}: " + " ".join(f"{k} {v['accuracy']:.1%}" for k, v in slices.items()))
    return "; ".join(parts)


def warmstart_inputs(processor, items: Sequence[ToyItem], prompt: str, think: Sequence[bool],
                     planted: Sequence[Mistake] | None = None) -> dict:
    """:func:`audiothink.sft.encode_replies` for in-memory items: their clips, prompts and targets (with the
    ``planted`` mistakes, one per item, when given)."""
    planted = [NO_MISTAKE] * len(items) if planted is None else planted
    return encode_replies(processor, [item.clips for item in items],
                          [render_prompt(as_sample(item), prompt) for item in items],
                          [target(item, t, m) for item, t, m in zip(items, think, planted, strict=True)])


if __name__ == "__main__":
    main()
