"""Consistency reward R_c: does the reasoning conclude what the answer says? (how to think)

A judge reads the think block and the answer block and says whether the reasoning's conclusion is the
answer given: 1 yes, 0 no. Values by completion:

* no think block (direct answers, and malformed completions without one): 1 -- nothing to contradict;
* think block but no answer block: 0 -- the reasoning concludes nothing that was given;
* ``only_correct=True`` (default, the paper's reading): only correct answers are judged; a wrong answer
  gets 0, which in the recipe ``R_a * (1 + 0.5 * R_c)`` means "no consistency bonus", i.e. the factor 1;
  a row whose gold answer is not among its choices gets None, like ``accuracy``;
* ``only_correct=False``: every think completion is judged;
* judge failure (timeout, server error, unparsable reply): None, counted in ``judge/failures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiothink.formats import parse
from audiothink.judge import Judge
from .accuracy import is_correct

FIELDS = ("question", "choices", "think", "answer")


class Consistency:
    """R_c in {0, 1} from a judge; async (TRL awaits it, in parallel with the other async rewards).

    >>> import asyncio
    >>> from audiothink.judge import RuleJudge
    >>> from audiothink.rewards import Consistency
    >>> completions = ["<think>i count two beeps</think><answer>two</answer>",
    ...                "<think>i count two beeps</think><answer>one</answer>", "<answer>one</answer>"]
    >>> columns = {"question": ["how many beeps?"] * 3, "choices": [["one", "two"]] * 3, "answer": ["two"] * 3}
    >>> asyncio.run(Consistency(RuleJudge())(completions, **columns))
    [1.0, 0.0, 1.0]
    >>> asyncio.run(Consistency(RuleJudge(), only_correct=False)(completions, **{**columns, "answer": ["one"] * 3}))
    [1.0, 0.0, 1.0]
    """

    __name__ = "consistency"
    judge_fields = FIELDS  # what it sends the judge: checked against the judge's prompt at start-up

    def __init__(self, judge: Judge, only_correct: bool = True, prompt: str = "consistency", letters: bool = False):
        judge.check_task(prompt, FIELDS)  # a prompt asking for a field we do not send fails at start-up
        self.judge = judge
        self.only_correct = only_correct
        self.prompt = prompt
        self.letters = bool(letters)  # "correct" as audiothink.rewards.Accuracy judges it: the benchmarks' rule, or letters

    async def __call__(
        self,
        completions: list[Any],
        question: Sequence[str] | None = None,
        choices: Sequence[Sequence[str]] | None = None,
        answer: Sequence[str] | None = None,
        log_metric=None,
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(completions)
        question = question if question is not None else [""] * n
        choices = choices if choices is not None else [[] for _ in range(n)]
        if self.only_correct and answer is None:
            raise ValueError("consistency with only_correct=true needs the dataset's 'answer' column")
        scores: list[float | None] = [None] * n
        to_judge: list[int] = []
        for i, c in enumerate(completions):
            p = parse(c)
            if not p.thinks:
                scores[i] = 1.0
            elif not p.answer:
                scores[i] = 0.0
            elif self.only_correct:
                correct = is_correct(c, answer[i], choices[i], letters=self.letters)
                if correct is None:
                    scores[i] = None
                elif not correct:
                    scores[i] = 0.0
                else:
                    to_judge.append(i)
            else:
                to_judge.append(i)
        items = []
        for i in to_judge:
            p = parse(completions[i])
            items.append({"question": question[i], "choices": list(choices[i]), "think": p.think, "answer": p.answer})
        # Called even with nothing to judge, so judge/failures and judge/latency_s are logged every step.
        judged = await self.judge.score(self.prompt, items, log_metric=log_metric)
        for i, s in zip(to_judge, judged):
            scores[i] = s
        return scores


# The class body sets __name__ for instances; this sets it on the class itself too.
Consistency.__name__ = "consistency"
