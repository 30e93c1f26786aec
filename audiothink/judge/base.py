"""What every judge shares: versioned prompts with strict parsing, the scoring interface, the accounting.

A judge answers one question about many samples at once::

    scores = await judge.score("consistency", items, log_metric=log_metric)

``items`` are mappings of template fields (``question``, ``choices``, ``think``, ``answer`` for the
built-in prompts); ``scores`` holds one ``float`` or ``None`` per item. ``None`` means the judge could
not give a score (timeout, server error, unparsable reply): never a made-up 0 or 1, which would skew the
group baseline. Each call adds its failed samples to ``judge.failures`` and, given TRL's ``log_metric``
(every reward receives it), logs ``judge/failures`` (samples without a score) and ``judge/latency_s``
(wall-clock seconds of the call). A judge never raises on what a model or server sends back.

So that a judge that cannot be reached is found before training, not after it (every sample None, exit
0), :meth:`Judge.probe` asks one short question per task at start-up and checks that the reply parses
(``audiothink/judge/watch.py``: the probe, and the warning when failures pile up during training).
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("audiothink.judge")

Items = Sequence[Mapping[str, Any]]
LogMetric = Callable[[str, float], None]

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")

#: What to do when the start-up probe fails: stop the run (exit 2), or warn and train on.
PROBE_ACTIONS = ("stop", "warn")

#: The probe's question: a short item with every built-in field, one that any judge model can answer.
PROBE_ITEM = {
    "question": "How many beeps are in the clip?",
    "choices": ["one", "two", "three"],
    "think": "I hear a first beep and then a second one, and nothing after. So the answer is two.",
    "answer": "two",
}


@dataclass(frozen=True)
class Prompt:
    """A judge prompt: the text sent to the model and the one reply shape accepted.

    Exactly one of ``labels`` (the reply is one of these words, mapped to a score) or ``scale``
    (the reply is one number on the grid ``min, min + step, ..., max``) is set. Parsing is strict: the
    first non-empty line of the reply, stripped, lower-cased, without a final ``.``, must be a label or
    a grid number, else the score is ``None``. Bump ``version`` whenever the wording changes: scores are
    comparable only within one version.

    >>> p = Prompt("consistency", "Does {think!r} conclude {answer!r}? yes or no:", labels={"yes": 1.0, "no": 0.0})
    >>> p.parse(" Yes.\\nBecause..."), p.parse("maybe"), p.parse("yes, mostly")
    (1.0, None, None)
    >>> q = Prompt("think_quality", "Rate: {think}", scale={"min": 0.0, "max": 1.0, "step": 0.1})
    >>> q.parse("0.7"), q.parse("1"), q.parse("0.75"), q.parse("1.2"), q.parse("0.7/1")
    (0.7, 1.0, None, None, None)
    """

    name: str
    template: str
    labels: Mapping[str, float] | None = None
    scale: Mapping[str, float] | None = None
    version: int = 1
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.scale is None):
            raise ValueError(f"judge prompt {self.name!r}: give exactly one of labels or scale")
        if self.labels is not None:
            labels = {str(k).strip().lower(): float(v) for k, v in dict(self.labels).items()}
            if not labels:
                raise ValueError(f"judge prompt {self.name!r}: labels is empty")
            object.__setattr__(self, "labels", labels)
        if self.scale is not None:
            scale = {k: float(v) for k, v in dict(self.scale).items()}
            if set(scale) != {"min", "max", "step"} or scale["step"] <= 0 or scale["max"] < scale["min"]:
                raise ValueError(f"judge prompt {self.name!r}: scale needs min <= max and step > 0, got {scale}")
            object.__setattr__(self, "scale", scale)
        try:
            names = tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(self.template) if f))
        except ValueError as e:  # an unmatched brace: a config typo, reported at start-up
            raise ValueError(f"judge prompt {self.name!r}: bad template ({e}); write literal braces as {{{{ }}}}") from e
        object.__setattr__(self, "fields", tuple(re.split(r"[.\[!:]", f)[0] for f in names))

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> Prompt:
        spec = dict(spec)
        return cls(
            name=name,
            template=str(spec["template"]),
            labels=dict(spec["labels"]) if spec.get("labels") is not None else None,
            scale=dict(spec["scale"]) if spec.get("scale") is not None else None,
            version=int(spec.get("version", 1)),
        )

    def render(self, item: Mapping[str, Any]) -> str:
        """The template filled from ``item``; list values (choices) become ``(A) text`` lines."""
        values = {k: _render_value(v) for k, v in item.items()}
        return self.template.format_map(values)

    def parse(self, reply: Any) -> float | None:
        """The score a reply states, or None. Never raises."""
        if not isinstance(reply, str):
            return None
        lines = [line.strip() for line in reply.strip().splitlines()]
        if not lines or not lines[0]:
            return None
        word = lines[0].lower()
        if word.endswith("."):
            word = word[:-1].rstrip()
        if self.labels is not None:
            return self.labels.get(word)
        assert self.scale is not None
        if not _NUMBER.fullmatch(word):
            return None
        value = float(word)
        lo, hi, step = self.scale["min"], self.scale["max"], self.scale["step"]
        steps = (value - lo) / step
        if not (lo - 1e-9 <= value <= hi + 1e-9) or abs(steps - round(steps)) > 1e-6:
            return None
        return round(lo + round(steps) * step, 10)


def unparsable(prompt: Prompt, reply: Any) -> str | None:
    """None when ``reply`` parses under ``prompt``, else the message that says so (for the probe)."""
    if prompt.parse(reply) is not None:
        return None
    if prompt.labels is not None:
        expected = "one of " + ", ".join(prompt.labels)
    else:
        assert prompt.scale is not None
        expected = f"a number from {prompt.scale['min']:g} to {prompt.scale['max']:g} in steps of {prompt.scale['step']:g}"
    shown = reply[:60] if isinstance(reply, str) else reply
    return f"the reply {shown!r} to the {prompt.name!r} prompt does not parse (expected {expected} on its first line)"


def _render_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "\n".join(f"({string.ascii_uppercase[i % 26]}) {v}" for i, v in enumerate(value))
    return "" if value is None else value


def prompts_from_config(prompts: Mapping[str, Any] | None) -> dict[str, Prompt]:
    """``{name: Prompt}`` from the ``judge.prompts`` config mapping (name -> template, labels|scale, version)."""
    if not prompts:
        return {}
    return {str(name): Prompt.from_config(str(name), spec) for name, spec in dict(prompts).items()}


class Judge:
    """Base class of the judge backends. Subclasses implement ``_score``; callers use ``score``.

    ``failures`` counts samples that got no score, over the judge's life (tests and summaries read it);
    per call, the count goes to ``log_metric("judge/failures", n)``.
    """

    #: built-in prompt names a reward may rely on (the rule judge knows only these)
    BUILTIN = ("consistency", "think_quality")

    def __init__(self, prompts: Mapping[str, Any] | None = None, on_probe_failure: str = "stop",
                 max_failure_share: float = 0.5, failure_window: int = 10):
        if on_probe_failure not in PROBE_ACTIONS:
            raise ValueError(f"judge.on_probe_failure must be one of {list(PROBE_ACTIONS)}, got {on_probe_failure!r}")
        if not 0.0 <= float(max_failure_share) <= 1.0 or int(failure_window) < 1:
            raise ValueError(f"judge: need 0 <= max_failure_share <= 1 and failure_window >= 1, got "
                             f"{max_failure_share} and {failure_window}")
        self.prompts = prompts_from_config(prompts)
        self.on_probe_failure = on_probe_failure
        self.max_failure_share = float(max_failure_share)
        self.failure_window = int(failure_window)
        self.failures = 0
        self.samples = 0  # items asked, over the judge's life (failures / samples: the failure share)
        self.calls = 0

    #: where the judge is, for messages (``judge.base_url=...``, ``judge.path=...``); None: nowhere to reach
    where: str | None = None

    def probe(self, task: str | Prompt) -> str | None:
        """Ask ``task`` once about :data:`PROBE_ITEM`: None when the reply parses, else why not (one line).

        Cheap by design (one short request, no retries); the base class has nothing to reach (the rule
        judge) and answers None.
        """
        return None

    def probe_text(self, task: str | Prompt) -> tuple[Prompt, str]:
        """The prompt of ``task`` and its text for the probe item (fields it does not know stay empty)."""
        prompt = self.prompt(task)
        return prompt, prompt.render({**dict.fromkeys(prompt.fields, ""), **PROBE_ITEM})

    def prompt(self, task: str | Prompt) -> Prompt:
        """The Prompt for a name from config (or a Prompt object, returned as is)."""
        if isinstance(task, Prompt):
            return task
        try:
            return self.prompts[task]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__}: no prompt named {task!r} in judge.prompts (have {sorted(self.prompts)})"
            ) from None

    @classmethod
    def for_checks(cls, prompts: Mapping[str, Any] | None = None) -> Judge:
        """A judge of this class with its prompts and nothing else (no model, server or client): what
        :meth:`check_task` reads. The config check (audiothink/plumbing/validate.py) asks it, before anything loads,
        whether the judge can score each task the rewards name. A backend whose ``check_task`` needs more
        overrides this."""
        judge = cls.__new__(cls)
        Judge.__init__(judge, prompts)
        return judge

    def prompt_fields(self, task: str | Prompt) -> tuple[str, ...]:
        """The template fields of ``task``'s prompt; () where this judge has no prompt for it."""
        try:
            return self.prompt(task).fields
        except ValueError:
            return ()

    def check_task(self, task: str | Prompt, fields: Sequence[str]) -> None:
        """Raise ValueError, at start-up, if this judge cannot score ``task`` (a prompt name from config, or a
        reward's own Prompt) from items with ``fields``."""
        unknown = [f for f in self.prompt(task).fields if f not in fields]
        if unknown:
            raise ValueError(
                f"judge prompt {task!r} uses field(s) {unknown}; the reward provides {list(fields)}"
            )

    async def score(
        self, task: str | Prompt, items: Items, *, log_metric: LogMetric | None = None
    ) -> list[float | None]:
        """One score (or None) per item; failures counted and, with ``log_metric``, logged."""
        items = list(items)
        start = time.perf_counter()
        if items:
            scores, failed = await self._score(task, items)
        else:
            scores, failed = [], 0
        latency = time.perf_counter() - start
        if len(scores) != len(items):  # a backend bug, not a model failure
            raise RuntimeError(f"{type(self).__name__} returned {len(scores)} scores for {len(items)} items")
        scores = [None if s is None or not math.isfinite(s) else float(s) for s in scores]
        self.failures += failed
        self.samples += len(items)
        self.calls += 1
        if log_metric is not None:
            log_metric("judge/failures", float(failed))
            log_metric("judge/latency_s", latency)
        return scores

    async def _score(self, task: str | Prompt, items: list[Mapping[str, Any]]) -> tuple[list[float | None], int]:
        """(scores, number of items that failed)."""
        raise NotImplementedError
