"""Reward formulas: a preset's total as an arithmetic expression over named rewards.

TRL only sums weighted rewards; the full recipe multiplies two of them,
``R = R_a * (1 + 0.5 * R_c) + 0.5 * R_f + R_t``. A reward preset states it as a string::

    formula: "adaptive_think * (1 + 0.5 * consistency) + 0.5 * format + think_quality"

The expression is parsed with ``ast`` and walked by hand: only reward names, numbers, ``+ - * /`` and
parentheses are accepted (no calls, attributes or anything else ``eval`` would run), and every name
must be a configured reward -- both checked at start-up (``ConfigError``). ``Formula`` is an ordinary
batch-wide reward of the reward API (audiothink/reward_api.py), with no special case in the trainer:
``build_rewards`` appends it last, named ``total`` (logged as ``rewards/total/mean``) with weight 1, so that
after the gather it runs once every reward it uses has its value, which it reads per sample from
``reward_values``. The components keep their own weights (0 when they only feed the formula), so
``R = formula + sum(weight * reward)``.

A component that is None for a sample (a judge failure, an unscoreable row) makes that sample's total
None, and the trainer then leaves the whole sample out of the step (advantage 0, not in its group's
baseline), as TRL does for a sample no reward could score. A zero division gives None too. A formula that is
None for every sample of a batch while other rewards score adds nothing to that step: it is logged once per run
as a warning, with the count of missing values by component.
"""

from __future__ import annotations

import ast
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from audiothink.plumbing.errors import ConfigError

log = logging.getLogger("audiothink.formula")

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class Formula:
    """The ``total`` reward: ``expression`` evaluated per sample on the other rewards' values.

    >>> f = Formula("adaptive_think * (1 + 0.5 * consistency) + 0.5 * format + think_quality")
    >>> f.names
    ('adaptive_think', 'consistency', 'format', 'think_quality')
    >>> f.evaluate({"adaptive_think": 2.0, "consistency": 1.0, "format": 1.0, "think_quality": 0.4})
    3.9
    >>> f.evaluate({"adaptive_think": 2.0, "consistency": None, "format": 1.0, "think_quality": 0.4}) is None
    True
    >>> Formula("accuracy + open('x')")
    Traceback (most recent call last):
    ...
    audiothink.plumbing.errors.ConfigError: reward.formula: "accuracy + open('x')": function calls are not allowed (only reward names, numbers, + - * / and parentheses)
    """

    __name__ = "total"
    batch_wide = True

    def __init__(self, expression: str, known: Iterable[str] | None = None):
        if not isinstance(expression, str) or not expression.strip():
            raise ConfigError(f"reward.formula: expected an expression string, got {expression!r}")
        self.expression = expression
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except SyntaxError as e:
            raise ConfigError(f"reward.formula: {expression!r} is not an expression: {e.msg}") from None
        self._tree = tree.body
        self._warned = False  # the all-None warning: once per run
        names: list[str] = []
        self._check(self._tree, names)
        self.names = tuple(sorted(set(names)))
        if known is not None:
            known = list(known)
            unknown = [n for n in self.names if n not in known]
            if unknown:
                raise ConfigError(
                    f"reward.formula: unknown reward name(s) {unknown} in {expression!r}; configured rewards: {known}"
                )

    def _check(self, node: ast.AST, names: list[str]) -> None:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            self._check(node.operand, names)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            pass
        elif isinstance(node, ast.Name):
            names.append(node.id)
        else:
            what = {ast.Call: "function calls", ast.Attribute: "attributes", ast.Subscript: "subscripts",
                    ast.Compare: "comparisons", ast.BoolOp: "and/or"}.get(type(node), type(node).__name__)
            if isinstance(node, ast.BinOp):
                what = f"operator {type(node.op).__name__}"
            raise ConfigError(
                f"reward.formula: {self.expression!r}: {what} {'are' if what.endswith('s') else 'is'} not allowed "
                "(only reward names, numbers, + - * / and parentheses)"
            )

    def evaluate(self, values: Mapping[str, float | None]) -> float | None:
        """The expression's value for one sample; None if a component is None or the result is not finite."""
        if any(values.get(n) is None or not math.isfinite(values[n]) for n in self.names):
            return None
        try:
            result = self._eval(self._tree, values)
        except ZeroDivisionError:
            return None
        return round(result, 12) if math.isfinite(result) else None

    def _eval(self, node: ast.AST, values: Mapping[str, float | None]) -> float:
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, values))
        if isinstance(node, ast.Constant):
            return float(node.value)
        assert isinstance(node, ast.Name)
        return float(values[node.id])  # type: ignore[arg-type]

    def __call__(
        self, completions: Sequence[Any], reward_values: Mapping[str, Sequence[float | None]] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        reward_values = reward_values or {}
        missing = [n for n in self.names if n not in reward_values]
        if missing:
            raise ValueError(
                f"formula {self.expression!r}: no values for {missing}; it must run after every reward it uses "
                f"(have {sorted(reward_values)})"
            )
        out = [self.evaluate({n: reward_values[n][i] for n in self.names}) for i in range(len(completions))]
        if out and not self._warned and all(v is None for v in out):
            self._warn_all_none(len(out), reward_values)
        return out

    def _warn_all_none(self, n: int, reward_values: Mapping[str, Sequence[float | None]]) -> None:
        """Warn (once) when the formula scored no sample of a batch while other rewards did."""
        scoring = {k: sum(v is not None for v in vals) for k, vals in reward_values.items() if k != self.__name__}
        if not any(scoring.values()):
            return  # nothing scored at all: the health monitor's no_reward says so
        self._warned = True
        missing = {k: sum(v is None or not math.isfinite(v) for v in reward_values[k]) for k in self.names}
        gaps = (", ".join(f"{k} {c}/{n}" for k, c in missing.items() if c)
                or "none (a zero division or a non-finite result on every sample)")
        scored = ", ".join(f"{k} {c}/{n}" for k, c in scoring.items() if c)
        log.warning("reward %r (reward.formula %r) is None for all %d samples of this batch while other rewards "
                    "score (%s): it adds nothing to this step's reward. Components without a value: %s. "
                    "(Logged once per run.)", self.__name__, self.expression, n, scored, gaps)

    def __repr__(self) -> str:
        return f"Formula({self.expression!r})"


# The class body sets __name__ for instances; this sets it on the class itself too.
Formula.__name__ = "total"
