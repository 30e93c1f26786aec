"""The openai judge: any OpenAI-compatible server (``vllm serve``, SGLang, a hosted API).

Per ``score`` call (one reward, one step): identical prompts are sent once; at most ``max_concurrency``
requests are in flight; each request has ``timeout_s`` in all; a request that times out, cannot connect,
gets HTTP 408/429/5xx or a malformed body is retried up to ``retries`` times, after
``backoff_s * 2**k`` seconds (k = 0, 1, ...) — or, when the server's reply says ``Retry-After`` (seconds
or an HTTP date; typical of 429 and 503), after the longer of that back-off and the wait the server asked
for, the latter capped at ``timeout_s`` (a retry inside the server's wait is wasted). Other HTTP errors (401, 404, ...) are not retried: they
will not heal. A reply whose text does not parse is retried only with ``retry_unparsable`` (at
temperature 0 the same prompt gives the same text). What still fails gets ``None``, is counted and
logged once per call.

The API key is read from the environment variable named by ``api_key_env`` and kept out of ``repr``,
logs and error messages; the config holds only the variable's name.

Besides the prompts of ``score``, :meth:`OpenAIJudge.ask` sends any texts (with an optional system message)
and reads each reply with a caller's parser, under the same retries and accounting: the MMAR rubric score
(``audiothink/benchmarks/rubric.py``) asks its own prompt and parses a JSON reply that way.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from audiothink.judge.base import Judge, Prompt, unparsable

log = logging.getLogger("audiothink.judge")

_RETRY_STATUS = frozenset({408, 429})

# The start-up probe waits at most this long (or timeout_s, when shorter): a server that is up answers
# 8 tokens in well under a second; one that is not there is refused at once.
PROBE_TIMEOUT_S = 10.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (>= 0), or None when absent or unreadable.

    RFC 9110: either delay-seconds (``"3"``; a decimal is accepted too) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), read against ``now`` (default: the wall clock). A date in the past
    asks for no wait.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000": an HTTP date is GMT all the same
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Failure(Exception):
    """One failed attempt: ``reason`` is what gets logged (never headers, never the key); ``retry_after``
    the wait the server asked for (seconds), if it said."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail  # the library's message (for the probe's one line; the counts use `reason`)
        self.retryable = retryable
        self.retry_after = retry_after


class OpenAIJudge(Judge):
    """A judge behind an OpenAI-compatible HTTP API.

    Args:
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server knows the judge by.
        prompts: ``{name: {template, labels|scale, version}}`` (``configs/judge/prompts/``).
        endpoint: ``completions`` (plain text, for base models) or ``chat`` (``/chat/completions``).
        api_key_env: name of the environment variable holding the API key; unset or empty = no key.
        max_concurrency: requests in flight at once, per call.
        timeout_s: seconds one request may take, connect to last byte; also the longest ``Retry-After``
            wait honoured.
        retries: extra attempts after a retryable failure.
        backoff_s: wait before the first retry; doubles for each further one. A longer ``Retry-After``
            from the server wins (capped at ``timeout_s``).
        retry_unparsable: also retry replies whose text does not parse.
        max_tokens: reply length; the score must be on the reply's first line (a rubric reply needs more).
        seed: sent with every request when set (servers that honour it, vLLM and OpenAI's, sample
            reproducibly); None = not sent.
        on_probe_failure: ``stop`` (the run, at start-up, when the probe gets no parsable reply) or ``warn``.
        max_failure_share, failure_window: warn once during training when more than this share of the
            samples of the last ``failure_window`` steps got no score (``audiothink/judge/watch.py``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        prompts: Mapping[str, Any] | None = None,
        endpoint: str = "completions",
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        retry_unparsable: bool = False,
        max_tokens: int = 8,
        seed: int | None = None,
        on_probe_failure: str = "stop",
        max_failure_share: float = 0.5,
        failure_window: int = 10,
    ):
        super().__init__(prompts, on_probe_failure=on_probe_failure, max_failure_share=max_failure_share,
                         failure_window=failure_window)
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"judge.endpoint must be 'completions' or 'chat', got {endpoint!r}")
        if max_concurrency < 1 or retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("judge: need max_concurrency >= 1, retries >= 0, timeout_s > 0, backoff_s >= 0")
        import httpx2 as httpx

        try:
            url = httpx.URL(str(base_url))
        except Exception as e:  # noqa: BLE001 - any parse error is a config error
            raise ValueError(f"judge.base_url={base_url!r} is not a URL ({type(e).__name__})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"judge.base_url={base_url!r}: expected http(s)://host[:port]/v1")
        self.base_url = str(base_url).rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.retry_unparsable = retry_unparsable
        self.max_tokens = int(max_tokens)
        self.seed = None if seed is None else int(seed)
        self.requests_sent = 0  # HTTP attempts, retries included (tests and profiling)
        if api_key_env and not os.environ.get(api_key_env):
            log.info("judge: %s is not set; requests go without an API key", api_key_env)

    def __repr__(self) -> str:  # no key here, ever
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def where(self) -> str:
        return f"judge.base_url={self.base_url} (model {self.model!r})"

    def probe(self, task: str | Prompt) -> str | None:
        """One request for ``task``, no retries, at most :data:`PROBE_TIMEOUT_S`; None when the reply parses."""
        import httpx2 as httpx

        prompt, text = self.probe_text(task)
        path, payload = self._payload(text)
        timeout_s = min(self.timeout_s, PROBE_TIMEOUT_S)

        async def ask() -> str:
            async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(),
                                         timeout=httpx.Timeout(timeout_s)) as client:
                return await self._post(client, path, payload, timeout_s=timeout_s)

        try:
            reply = asyncio.run(ask())
        except _Failure as failure:
            return failure.reason + (f" ({failure.detail})" if failure.detail else "")
        except Exception as e:  # noqa: BLE001 - whatever it is, the judge did not answer
            return f"{type(e).__name__}: {e}"
        return unparsable(prompt, reply)

    def _headers(self) -> dict[str, str]:
        # Read at request time: the key lives in the environment only, never in an attribute or config.
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _payload(self, text: str, system: str | None = None) -> tuple[str, dict[str, Any]]:
        """The request for ``text``; ``system``: a system message (chat), or text put before the prompt
        with a blank line (completions, which has no roles)."""
        common = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.seed is not None:
            common["seed"] = self.seed
        if self.endpoint == "chat":
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            return "/chat/completions", {**common, "messages": [*messages, {"role": "user", "content": text}]}
        return "/completions", {**common, "prompt": text if system is None else f"{system}\n\n{text}"}

    async def ask(self, texts: Sequence[str], parse: Callable[[str], Any] | Sequence[Callable[[str], Any]], *,
                  system: str | None = None, retries: int | None = None,
                  timeout_s: float | None = None) -> list[tuple[Any, str | None]]:
        """Send each of ``texts`` (one request each, identical texts included: e.g. several raters) and read
        each reply with ``parse`` (one parser for all, or one per text), which returns the value or raises
        ``ValueError`` naming what is wrong.

        Returns ``(value, None)`` or ``(None, reason)`` per text, in order: ``reason`` is the last failed
        attempt's (``timeout after 30 s``, ``HTTP 500``, ``malformed response``, ``unparsable reply: ...``).
        Retries as :meth:`score` does (``retries`` overrides ``self.retries``; an unparsable reply is retried
        only with ``retry_unparsable``); ``timeout_s`` overrides ``self.timeout_s``. Never raises on what the
        server sends; failures are added to ``failures`` and ``samples``.
        """
        import httpx2 as httpx

        texts = list(texts)
        parsers = [parse] * len(texts) if callable(parse) else list(parse)
        if len(parsers) != len(texts):
            raise ValueError(f"ask: {len(parsers)} parsers for {len(texts)} texts")
        timeout_s = self.timeout_s if timeout_s is None else float(timeout_s)
        retries = self.retries if retries is None else int(retries)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        reasons: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(),
                                     timeout=httpx.Timeout(timeout_s)) as client:
            results = await asyncio.gather(*(self._attempts(client, semaphore, t, f, reasons, system=system,
                                                            retries=retries, timeout_s=timeout_s)
                                             for t, f in zip(texts, parsers)))
        failed = sum(reason is not None for _, reason in results)
        self.failures += failed
        self.samples += len(texts)
        self.calls += 1
        return list(results)

    async def _attempts(self, client, semaphore: asyncio.Semaphore, text: str, parse: Callable[[str], Any],
                        reasons: Counter[str], *, system: str | None, retries: int,
                        timeout_s: float) -> tuple[Any, str | None]:
        """One text's attempts for :meth:`ask`: ``(value, None)`` or ``(None, last reason)``."""
        path, payload = self._payload(text, system)
        asked: float | None = None  # the previous reply's Retry-After, seconds
        reason = "no attempt"
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_wait(attempt, asked))
            try:
                async with semaphore:
                    reply = await self._post(client, path, payload, timeout_s=timeout_s)
                try:
                    return parse(reply), None
                except ValueError as e:
                    raise _Failure(f"unparsable reply: {e}", self.retry_unparsable) from None
            except _Failure as failure:
                reason = failure.reason
                reasons[failure.reason] += 1
                if not failure.retryable:
                    return None, reason
                asked = failure.retry_after
            except Exception as e:  # noqa: BLE001 - whatever happens, this text gets no value, the run goes on
                reason = f"unexpected {type(e).__name__}"
                reasons[reason] += 1
                return None, reason
        return None, reason

    async def _score(self, task: str | Prompt, items: list[Mapping[str, Any]]) -> tuple[list[float | None], int]:
        import httpx2 as httpx

        prompt = self.prompt(task)
        texts = [prompt.render(item) for item in items]
        unique = list(dict.fromkeys(texts))  # identical requests within the call are sent once
        semaphore = asyncio.Semaphore(self.max_concurrency)
        reasons: Counter[str] = Counter()
        # One client per call: it belongs to the running event loop, and connections are reused within it.
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(),
                                     timeout=httpx.Timeout(self.timeout_s)) as client:
            results = await asyncio.gather(*(self._ask(client, semaphore, t, prompt, reasons) for t in unique))
        by_text = dict(zip(unique, results))
        scores = [by_text[t] for t in texts]
        failed = sum(s is None for s in scores)
        if failed:
            detail = ", ".join(f"{r} x{n}" for r, n in reasons.most_common(5))
            log.warning("openai judge %r: %d of %d samples without a score (%d retries allowed; %s)",
                        prompt.name, failed, len(texts), self.retries, detail)
        return scores, failed

    async def _ask(self, client, semaphore: asyncio.Semaphore, text: str, prompt: Prompt,
                   reasons: Counter[str]) -> float | None:
        path, payload = self._payload(text)
        asked: float | None = None  # the previous reply's Retry-After, seconds
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_wait(attempt, asked))
            try:
                async with semaphore:
                    reply = await self._post(client, path, payload)
                score = prompt.parse(reply)
                if score is not None:
                    return score
                raise _Failure(f"unparsable reply {reply[:40]!r}", self.retry_unparsable)
            except _Failure as failure:
                reasons[failure.reason] += 1
                if not failure.retryable:
                    return None
                asked = failure.retry_after
            except Exception as e:  # noqa: BLE001 - whatever happens, this sample scores None, training goes on
                reasons[f"unexpected {type(e).__name__}"] += 1
                return None
        return None

    def retry_wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...): the exponential back-off, or the
        server's ``Retry-After`` (capped at ``timeout_s``) when that is longer."""
        wait = self.backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.timeout_s))
        return wait

    async def _post(self, client, path: str, payload: dict[str, Any], timeout_s: float | None = None) -> str:
        """The reply text of one request, or _Failure."""
        import httpx2 as httpx

        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        self.requests_sent += 1
        try:
            # wait_for bounds the whole request; httpx's own timeout bounds each phase
            response = await asyncio.wait_for(client.post(path, json=payload), timeout=timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Failure(f"timeout after {timeout_s:g} s", True) from None
        except httpx.HTTPError as e:  # connection refused, reset, protocol errors
            raise _Failure(f"{type(e).__name__}", True, detail=str(e)) from None
        if response.status_code >= 400:
            status = response.status_code
            retryable = status in _RETRY_STATUS or status >= 500
            hint = " (is the API key set?)" if status in (401, 403) else ""
            asked = retry_after_seconds(response.headers.get("retry-after")) if retryable else None
            raise _Failure(f"HTTP {status}{hint}", retryable, retry_after=asked)
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Failure("malformed response", True) from None
        if not isinstance(text, str):
            raise _Failure("malformed response", True)
        return text
