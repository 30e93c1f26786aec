"""The toy logic judge: think quality as the validity of a toy chain, step by step, from the text alone.

The toy's thoughts are formal (``audiothink/toy/data.py``: :func:`~audiothink.toy.data.rationale`): comma-separated
steps, each one of

* a **fact**: a clip and what it holds, ``first two`` / ``third high``;
* a **hop**: where the pointer leads, ``so third``;
* a **conclusion**: the option concluded, ``so three``.

A task's rule fixes the chain (the toy's question names the task: :func:`~audiothink.toy.data.task_of_question`):

* easy (``pitch``, ``count``): ``first V, so V`` -- the first clip's fact, then that fact concluded;
* hard (``pitch_hop``, ``count_hop``): ``first P, so T, T V, so V`` -- the first clip's fact P, the hop it calls for
  (low / one: second, middle / two: third, high / three: fourth), the fact of that clip T, and that fact
  concluded.

:func:`check_chain` walks the steps and checks each against the previous ones and the rule: the chain is
**valid** (think quality 1.0) when every step is the one the rule calls for given what came before,
**invalid** (0.0) at the first step that is not -- a hop to the wrong clip, a fact about another clip than
the hop's, a skipped fact, a conclusion that is not the fact it rests on, a fact that is not one of the
task's values (a count for a pitch clip), a chain that stops early or goes on after its conclusion. The
audio is never read, and the answer's correctness does not enter: a valid chain from a misheard fact is
valid (``first one, so second, second two, so two`` when the first clip has two beeps), a chain that reaches
the right option through a wrong hop is not. Text that is not in the chain language at all (a step that is no
fact, hop or conclusion, an empty step, free text) is **malformed**: invalid too (0.0, ``Chain.malformed`` set), a
thought without one valid step. Not None: None is a judge's *failure* (it could not judge), and a sample without
a score leaves the GRPO step -- a malformed thought would then escape the advantage its answer earns, and GRPO
learns to write one whenever it is unsure (seen on the ablation's row f: every reward None on such samples,
think rate on easy items 100 %, accuracy down to 79.7 %). The text is the model's, so the verdict is the judge's.

Items whose question is not a toy question get the rule judge's surface stand-in (``audiothink/judge/rule.py``):
the logic judge speaks only the toy's reasoning language. Consistency is the rule judge's (the option of the
thought's last "so X" is the one answered). Deterministic, offline, no model: select it with ``judge=toy_logic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audiothink.judge.base import Prompt
from audiothink.judge.rule import RuleJudge, consistency, think_quality
from audiothink.toy.data import COUNTS, DIFFICULTY, ORDINALS, PITCH_CLASSES, task_of_question, task_values

__all__ = ["ToyLogicJudge", "Chain", "check_chain", "chain_validity"]

_VALUES = frozenset(PITCH_CLASSES + COUNTS)  # every fact word of the toy (a step's value may be of the wrong task)
_CLIPS = frozenset(ORDINALS)


@dataclass(frozen=True)
class Chain:
    """A toy chain's verdict: ``valid`` True / False, ``why`` (one line, for people; "" when valid) and
    ``malformed`` (not in the chain language at all; such a chain is invalid)."""

    valid: bool
    why: str = ""
    malformed: bool = False

    @property
    def score(self) -> float:
        """Think quality: 1.0 valid, 0.0 invalid (malformed included)."""
        return float(self.valid)


def _steps(think: str) -> list[tuple[str, str, str]] | str:
    """``[(kind, clip or "", value or clip), ...]`` (kind: fact, hop, conclusion), or why the text is malformed."""
    text = " ".join(think.lower().split()).rstrip(".").strip()
    if not text:
        return "an empty thought"
    steps = []
    for k, raw in enumerate(text.split(","), 1):
        words = raw.split()
        if len(words) == 2 and words[0] in _CLIPS and words[1] in _VALUES:
            steps.append(("fact", words[0], words[1]))
        elif len(words) == 2 and words[0] == "so" and words[1] in _CLIPS:
            steps.append(("hop", "", words[1]))
        elif len(words) == 2 and words[0] == "so" and words[1] in _VALUES:
            steps.append(("conclusion", "", words[1]))
        else:
            return f"step {k} {raw.strip()!r} is no fact, hop or conclusion"
    return steps


def check_chain(task: str, think: Any) -> Chain:
    """Check the chain ``think`` against toy ``task``'s rule (module doc), step by step, without the audio.

    ``task``: a toy task (``pitch``, ``count``, ``pitch_hop``, ``count_hop``); ``think``: the think block's text.
    Raises ValueError for an unknown task (a caller's bug), never for the text.

    >>> check_chain("count_hop", "first two, so third, third three, so three")
    Chain(valid=True, why='', malformed=False)
    >>> check_chain("count_hop", "first one, so second, second two, so two").valid  # misheard, but valid
    True
    >>> check_chain("count_hop", "first two, so fourth, fourth three, so three")
    Chain(valid=False, why="step 2: 'two' points to the third clip, not the fourth", malformed=False)
    >>> check_chain("pitch", "first low, so high").why
    "step 2: concludes 'high' from 'low'"
    >>> check_chain("pitch", "hmm, low I think")
    Chain(valid=False, why="malformed: step 1 'hmm' is no fact, hop or conclusion", malformed=True)
    """
    if task not in DIFFICULTY:
        raise ValueError(f"unknown toy task {task!r}")
    if not isinstance(think, str):
        return Chain(False, "malformed: no text", malformed=True)
    steps = _steps(think)
    if isinstance(steps, str):
        return Chain(False, f"malformed: {steps}", malformed=True)
    values = task_values(task)
    # each step is checked against the rule and the steps before it only (one check per step, so that a wrong
    # step is named where it is, not by a later step that inherits the error)
    hard = DIFFICULTY[task] == "hard"
    n_rule = 4 if hard else 2
    fact = None  # the value of the last fact stated, which the next step must use
    hopped = None  # the clip the hop went to, whose fact comes next
    for k, (kind, clip, value) in enumerate(steps, 1):
        if k > n_rule:
            return Chain(False, f"step {k}: goes on after the conclusion")
        if k == 1:
            if kind != "fact" or clip != "first":
                return Chain(False, "step 1: does not state the first clip's fact")
        elif hard and k == 2:
            if kind != "hop":
                return Chain(False, f"step 2: no hop from {fact!r} (a skipped step)")
            target = ORDINALS[1 + values.index(fact)]
            if value != target:
                return Chain(False, f"step 2: {fact!r} points to the {target} clip, not the {value}")
            hopped = value
        elif hard and k == 3:
            if kind != "fact" or clip != hopped:
                why = (f"a fact of the {clip} clip, but the hop went to the {hopped}" if kind == "fact" else
                       f"no fact of the {hopped} clip before the conclusion (a skipped fact)")
                return Chain(False, f"step 3: {why}")
        else:  # the conclusion
            if kind != "conclusion":
                return Chain(False, f"step {k}: no conclusion from {fact!r}")
            if value != fact:
                return Chain(False, f"step {k}: concludes {value!r} from {fact!r}")
        if kind == "fact":
            if value not in values:
                return Chain(False, f"step {k}: {value!r} is not a {task} fact (one of {', '.join(values)})")
            fact = value
    if len(steps) < n_rule:
        return Chain(False, f"stops after step {len(steps)} of {n_rule} (no conclusion)")
    return Chain(True)


def chain_validity(think: Any, question: Any) -> Chain | None:
    """:func:`check_chain` for an item with this question; None when it is not a toy question (no rule applies)."""
    task = task_of_question(question)
    return None if task is None else check_chain(task, think)


class ToyLogicJudge(RuleJudge):
    """The rule judge with the toy's logic for think quality (module doc); free text keeps the surface stand-in.

    >>> import asyncio
    >>> judge = ToyLogicJudge()
    >>> q, ch = "how many beeps are there?", ["one", "two", "three"]
    >>> items = [{"question": q, "choices": ch, "think": t, "answer": "two"}
    ...          for t in ("first two, so two", "first two, so one", "i count two beeps")]
    >>> asyncio.run(judge.score("think_quality", items)), judge.failures  # free text: malformed, not a failure
    ([1.0, 0.0, 0.0], 0)
    >>> asyncio.run(judge.score("consistency", items))
    [1.0, 0.0, 1.0]
    """

    def __init__(self, prompts: Mapping[str, Any] | None = None):
        # Prompts are accepted (and ignored) so that every backend takes the same config.
        super().__init__(prompts)

    async def _score(self, task: str | Prompt, items: list[Mapping[str, Any]]) -> tuple[list[float | None], int]:
        name = task.name if isinstance(task, Prompt) else task
        if name == "consistency":
            return [consistency(i.get("think"), i.get("answer"), i.get("choices")) for i in items], 0
        if name == "think_quality":
            return [_quality(i) for i in items], 0
        self.check_task(name, ())
        raise AssertionError("unreachable")


def _quality(item: Mapping[str, Any]) -> float:
    chain = chain_validity(item.get("think"), item.get("question"))
    if chain is None:  # free text: the surface stand-in
        return think_quality(item.get("think"), item.get("question"), item.get("choices"))
    return chain.score
