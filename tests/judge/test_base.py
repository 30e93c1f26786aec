"""audiothink.judge.base: judge prompts parsed and checked against the fields a reward passes."""

from __future__ import annotations

import pytest

from audiothink.judge import Prompt, RuleJudge
from audiothink.rewards import Consistency


def test_prompt_parsing_and_validation():
    p = Prompt("x", "{think} {choices}", scale={"min": 0, "max": 1, "step": 0.1})
    assert [p.parse(r) for r in ["0.3", "\n 0.3 \nmore", ".5", "1.0.", "-0.1", "0.35", "3/10", "", None]] == [
        0.3, 0.3, 0.5, 1.0, None, None, None, None, None]
    assert p.render({"think": "t", "choices": ["a", "b"]}) == "t (A) a\n(B) b"
    assert p.fields == ("think", "choices")
    with pytest.raises(ValueError, match="exactly one of labels or scale"):
        Prompt("x", "{think}")
    with pytest.raises(ValueError, match="bad template"):
        Prompt("x", "{think", labels={"yes": 1})
    with pytest.raises(ValueError, match=r"uses field\(s\) \['audio'\]"):
        Consistency(TableJudgeWithPrompt("consistency", "{audio}"))


class TableJudgeWithPrompt(RuleJudge):
    def __init__(self, name, template):
        super().__init__({name: {"template": template, "labels": {"yes": 1.0, "no": 0.0}}})

    def check_task(self, task, fields):
        return super(RuleJudge, self).check_task(task, fields)
