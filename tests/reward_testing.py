"""Test helpers for rewards and judges: a toy trainer with any rewards, a fake OpenAI-compatible server, and the
columns and replies the rewards' tests share.

The server listens on 127.0.0.1 only, on a free port, and is shut down by the fixture that starts it;
every request it serves is bounded (a handler sleeps at most `MAX_DELAY_S`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from audiothink.data import load_samples, to_dataset
from audiothink.judge import Judge
from audiothink.trainer import AudioGRPOTrainer
from tests.helpers import PROMPT, load_toy, toy_grpo_args

MAX_DELAY_S = 2.0


def toy_trainer(toy_model_dir, toy_files, tmp_path, reward_funcs, weights=None, *, max_steps=1, n_rows=8,
                max_audio_seconds=2.0, **cfg):
    """AudioGRPOTrainer on the toy model and `n_rows` toy items, with the given rewards (G = 4)."""
    model, processor = load_toy(toy_model_dir)
    samples = load_samples(toy_files["train"]).samples[:n_rows]
    args = toy_grpo_args(tmp_path, max_steps=max_steps, reward_weights=weights, **cfg)
    return AudioGRPOTrainer(
        model=model,
        processor=processor,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=to_dataset(samples, PROMPT),
        max_audio_seconds=max_audio_seconds,
    )


class TableJudge(Judge):
    """A judge that looks scores up: `table[task][think]` (missing think -> None, counted as a failure)."""

    def __init__(self, table: dict[str, dict[str, float | None]]):
        super().__init__()
        self.table = table
        self.seen: list[tuple[str, dict]] = []

    def check_task(self, task, fields):
        pass

    async def _score(self, task, items):
        scores = []
        for item in items:
            self.seen.append((task, dict(item)))
            scores.append(self.table.get(task, {}).get(item["think"]))
        return scores, sum(s is None for s in scores)


def default_reply(prompt: str) -> str:
    """What the fake judge says: "yes" to a yes/no question, else a rating."""
    return "yes" if "yes or no" in prompt else "0.7"


class FakeJudgeServer:
    """An OpenAI-compatible /v1/completions and /v1/chat/completions endpoint on 127.0.0.1.

    `behave(prompt) -> (status, body: str, delay_s[, headers: dict])` decides each response; the default
    answers correctly. `requests` records (path, payload, authorization header) of everything received,
    `arrivals` the time.monotonic() of each; `max_in_flight` the most requests handled at once.
    """

    def __init__(self, behave: Callable[[str], tuple[int, str, float]] | None = None):
        self.behave = behave or (lambda prompt: (200, completion_body(default_reply(prompt)), 0.0))
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                prompt = payload.get("prompt") or payload.get("messages", [{}])[-1].get("content", "")
                with server._lock:
                    server.requests.append((self.path, payload, self.headers.get("Authorization")))
                    server.arrivals.append(time.monotonic())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, body, delay, *rest = server.behave(prompt)
                    headers = rest[0] if rest else {}
                    if self.path.endswith("/chat/completions") and status == 200:
                        body = chat_body(body)
                    time.sleep(min(delay, MAX_DELAY_S))
                    data = body.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def completion_body(text: str) -> str:
    return json.dumps({"choices": [{"text": text, "index": 0}]})


def chat_body(completions_body: str) -> str:
    """Rewrite a /completions body for /chat/completions (bodies that are not JSON pass unchanged)."""
    try:
        text = json.loads(completions_body)["choices"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        return completions_body
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "index": 0}]})


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


# --------------------------------------------------------------------------- the judged rewards' columns

JUDGED_CHOICES = ["violin", "cello", "double bass"]
JUDGED_QUESTION = "which instrument plays the low melody?"


def judged_columns(n, answer="cello"):
    return {"question": [JUDGED_QUESTION] * n, "choices": [JUDGED_CHOICES] * n, "answer": [answer] * n}


# --------------------------------------------------------------------------- the built-in rewards' columns and cases

CHOICES = ["violin", "cello", "double bass", "flute"]
GOLD = "cello"

THINK_RIGHT = "<think>low and bowed</think><answer>cello</answer>"
THINK_WRONG = "<think>high and bowed</think><answer>violin</answer>"
NO_THINK_RIGHT = "<answer>(B) cello</answer>"
NO_THINK_WRONG = "<answer>flute</answer>"


def columns(n, gold=GOLD, choices=CHOICES):
    return {"answer": [gold] * n, "choices": [list(choices)] * n}


# Replies, each with its format reward (the adaptive reward gets them too: it must never raise).
FORMAT_CASES = [
    (THINK_RIGHT, 1.0),
    (NO_THINK_RIGHT, 1.0),
    ("\n <think>\nx\n</think>\n\n<answer>\nB\n</answer>\n", 1.0),
    ("  <answer>B</answer>  ", 1.0),
    ([{"role": "assistant", "content": THINK_RIGHT}], 1.0),
    ("<answer>B</answer><answer>C</answer>", 0.0),
    ("<think>unclosed<answer>B</answer>", 0.0),
    ("<think>x</think><answer>B", 0.0),
    ("", 0.0),
    ("<answer>B</answer> done", 0.0),
    ("ok <think>x</think><answer>B</answer>", 0.0),
    ("<answer>B</answer><think>x</think>", 0.0),
    ("<think><think>x</think></think><answer>B</answer>", 0.0),
    ("<answer></answer>", 0.0),
    ("<think></think><answer>B</answer>", 0.0),
    ("<think>x<answer>B</answer></think><answer>B</answer>", 0.0),
    ("%$#@!<<>>", 0.0),
    (None, 0.0),
    (12, 0.0),
]
