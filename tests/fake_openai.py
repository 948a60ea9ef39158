"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests: the test double at the edge we
cannot reach (the paid judge). It records every request and misbehaves when a test tells it to (see :class:`Reply`).
Shared by tests/test_judges.py and the Table 1 pipeline test; tests/conftest.py serves one per session
(``judge_server``; ``fake_judge`` resets it around a test with :meth:`FakeOpenAI.reset`)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    """What the server does with one request: wait ``delay`` s, then answer (or drop the connection)."""

    status: int = 200
    content: str | None = None  # the assistant message for a 200; None: the server's own rule decides
    raw: bytes | None = None  # a raw body instead of JSON (garbage)
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without any answer
    echo_auth: bool = False  # put the received Authorization header into the (error) body, like a careless proxy
    logprobs: dict | None = None  # the choice's "logprobs" object for a 200 that asked for logprobs (None: default)
    # A plain-text body (any status, 200 included: garbage) with the received Authorization header at this character
    # offset: ``echo_auth_at`` filler characters, the header value (its first ``echo_auth_chars`` characters when set,
    # like a proxy that truncates what it echoes), then ``echo_auth_tail`` more filler. Puts the key where a client's
    # cut of the error body falls (tests/test_judges.py, the key never leaks).
    echo_auth_at: int | None = None
    echo_auth_chars: int | None = None
    echo_auth_tail: int = 600


_PAIR = re.compile(
    r"=== (?:Reply|Summary) A ===\n(.*?)\n\n=== (?:Reply|Summary) B ===\n(.*?)\n\n=== Instructions ===", re.S
)


def prefer_longer(content: str) -> str:
    """The server's default rule: the longer response wins, equal lengths tie (read back from the rendered prompt)."""
    m = _PAIR.search(content)
    if m is None:
        return "I cannot find the two responses."
    a, b = len(m.group(1)), len(m.group(2))
    choice = "A" if a > b else "B" if b > a else "tie"
    return f"Comparison: one response is {abs(a - b)} characters longer.\nPreferred: {choice}"


class FakeOpenAI:
    """A threaded chat-completions server on 127.0.0.1. ``rule(content, n)`` -> :class:`Reply`, where ``content``
    is the last message's text and ``n`` counts how often this exact content has been asked (1 = first)."""

    def __init__(self):
        self.rule: Callable[[str, int], Reply] = lambda content, n: Reply()
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.per_content: Counter = Counter()
        self.finished: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": "not found"}}).encode())
                    return
                payload = json.loads(raw)
                content = payload["messages"][-1]["content"]
                with fake.lock:
                    fake.per_content[content] += 1
                    n = fake.per_content[content]
                    fake.requests.append({"headers": dict(self.headers), "body": payload, "content": content})
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    reply = fake.rule(content, n)
                    time.sleep(reply.delay)
                    if reply.drop:
                        self.close_connection = True
                        return
                    if reply.echo_auth_at is not None:
                        auth = self.headers.get("Authorization") or ""
                        if reply.echo_auth_chars is not None:
                            auth = auth[: reply.echo_auth_chars]
                        text = "." * reply.echo_auth_at + auth + " " + "~" * reply.echo_auth_tail
                        self._send(reply.status, text.encode(), reply.headers, ctype="text/plain")
                    elif reply.raw is not None:
                        self._send(reply.status, reply.raw, reply.headers, ctype="text/html")
                    elif reply.status != 200:
                        error = {"message": f"simulated HTTP {reply.status}", "type": "test", "code": reply.status}
                        if reply.echo_auth:
                            error["received_authorization"] = self.headers.get("Authorization")
                        self._send(reply.status, json.dumps({"error": error}).encode(), reply.headers)
                    else:
                        text = prefer_longer(content) if reply.content is None else reply.content
                        self._send(200, json.dumps(fake.completion(payload, text, reply.logprobs)).encode(), reply.headers)
                        with fake.lock:
                            fake.finished.append(content)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): expected
                    pass
                finally:
                    with fake.lock:
                        fake.inflight -= 1

            def _send(self, status, body, headers=None, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that timed out is not a test failure
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @staticmethod
    def completion(payload: dict, text: str, custom_logprobs: dict | None = None) -> dict:
        logprobs = None
        if payload.get("logprobs") and custom_logprobs is not None:
            logprobs = custom_logprobs
        elif payload.get("logprobs"):
            k = payload.get("top_logprobs") or 0
            logprobs = {"content": [{"token": "A", "logprob": -0.1, "bytes": [65],
                                     "top_logprobs": [{"token": t, "logprob": -0.1 - i, "bytes": [ord(t)]}
                                                      for i, t in enumerate("ABCDEFGH"[:k])]}]}
        prompt_tokens = sum(len(m["content"].split()) for m in payload["messages"])
        return {
            "id": f"chatcmpl-{secrets.token_hex(6)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload["model"] + "-2024-01-01",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())},
        }

    def reset(self, drain_s: float = 5.0) -> None:
        """Back to a fresh server's state (default rule, nothing recorded), for a server shared by several tests.
        First waits (at most ``drain_s``) for requests still being handled, e.g. a reply sleeping past a client's
        timeout, so that none of them lands in the next test's records."""
        deadline = time.monotonic() + drain_s
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.rule = lambda content, n: Reply()
            self.requests.clear()
            self.per_content.clear()
            self.finished.clear()
            self.max_inflight = self.inflight

    def count(self, needle: str | None = None) -> int:
        """Requests received whose message contains ``needle`` (all requests when None)."""
        with self.lock:
            return sum(needle is None or needle in r["content"] for r in self.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
