"""Think-quality reward R_t in [0, 1], 0.1 steps: how sound is the reasoning, right or wrong?

A judge rates the logic of the think block alone, independent of correctness. Completions without a
think block get the mean R_t of the think completions of the WHOLE batch (all ranks), so thinking is
neither paid nor charged for relative to the batch's typical reasoning; a batch with no scored think
completion gives every sample ``empty_value`` (default 0): a constant, which moves no advantage. A judge
failure leaves that think completion at None (counted in ``judge/failures``); it is left out of the mean.

Batch-wide in two phases, so that on several GPUs each rank judges only its own completions:
``local`` runs on every rank before the gather (async, alongside the other async rewards) and judges
the think completions; ``__call__`` runs once after the gather with those scores (``local_scores``)
and fills in the batch mean. Called on its own (no trainer), ``__call__`` does both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiothink.formats import parse
from audiothink.judge import Judge

FIELDS = ("question", "choices", "think", "answer")


class ThinkQuality:
    """R_t from a judge; direct answers get the batch mean of the think completions' R_t.

    >>> import asyncio
    >>> from audiothink.judge import RuleJudge
    >>> from audiothink.rewards import ThinkQuality
    >>> completions = ["<think>i count two beeps</think><answer>two</answer>",
    ...                "<think>hmm</think><answer>one</answer>", "<answer>one</answer>"]
    >>> columns = {"question": ["how many beeps?"] * 3, "choices": [["one", "two"]] * 3}
    >>> asyncio.run(ThinkQuality(RuleJudge())(completions, **columns))
    [1.0, 0.2, 0.6]
    >>> asyncio.run(ThinkQuality(RuleJudge())(["<answer>one</answer>"], **columns))
    [0.0]
    """

    __name__ = "think_quality"
    batch_wide = True
    judge_fields = FIELDS  # what it sends the judge: checked against the judge's prompt at start-up

    def __init__(self, judge: Judge, prompt: str = "think_quality", empty_value: float = 0.0):
        judge.check_task(prompt, FIELDS)
        self.judge = judge
        self.prompt = prompt
        self.empty_value = float(empty_value)

    async def local(
        self,
        completions: list[Any],
        question: Sequence[str] | None = None,
        choices: Sequence[Sequence[str]] | None = None,
        log_metric=None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Per rank, before the gather: the judge's R_t for think completions, None for the others."""
        n = len(completions)
        question = question if question is not None else [""] * n
        choices = choices if choices is not None else [[] for _ in range(n)]
        parsed = [parse(c) for c in completions]
        index = [i for i, p in enumerate(parsed) if p.thinks]
        items = [
            {"question": question[i], "choices": list(choices[i]), "think": parsed[i].think,
             "answer": parsed[i].answer or ""}
            for i in index
        ]
        judged = await self.judge.score(self.prompt, items, log_metric=log_metric)
        scores: list[float | None] = [None] * n
        for i, s in zip(index, judged):
            scores[i] = s
        return scores

    async def __call__(
        self, completions: list[Any], local_scores: Sequence[float | None] | None = None, **columns: Any
    ) -> list[float | None]:
        """After the gather: think completions keep their score, the others get the batch mean."""
        if local_scores is None:
            local_scores = await self.local(completions, **columns)
        thinks = [parse(c).thinks for c in completions]
        scored = [s for t, s in zip(thinks, local_scores) if t and s is not None]
        mean = sum(scored) / len(scored) if scored else self.empty_value
        return [s if t else mean for t, s in zip(thinks, local_scores)]


# The class body sets __name__ for instances; this sets it on the class itself too.
ThinkQuality.__name__ = "think_quality"
