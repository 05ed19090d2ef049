"""A real OpenAI-compatible HTTP server on loopback (``http.server.ThreadingHTTPServer``) for teacher
tests and the teacher benchmark. It records every request and can inject faults:

- ``"429"``: Too Many Requests with ``Retry-After`` (``retry_after`` seconds, or an HTTP date),
- ``"500"``: Internal Server Error,
- ``"hang"``: say nothing for ``hang_s`` seconds (past the client's timeout), then close,
- ``"reset"``: close the TCP connection with RST (SO_LINGER 0) before answering,
- ``"truncated"``: 200 with a Content-Length larger than the body, then close,
- ``"invalid"``: 200 with a body that is not JSON,
- ``"400"``: Bad Request with an OpenAI-style JSON error body (``error_message``),
- ``"refuse"``: 200 with no text, ``finish_reason="content_filter"`` (a refusal / content filter).

``always[prompt] = action`` answers that prompt with ``action`` every time (a prompt the teacher refuses
for good); with ``refuse_after=K`` every prompt first seen after the first K distinct prompts is refused
for good (``"refuse"``).

Faults hit a random ``fault_rate`` of requests (seeded), or follow ``script[prompt]``: a list of
actions consumed one per request for that prompt (``"ok"`` answers normally).

Run standalone (benchmarks): ``python tests/teacher/fake_server.py [--latency S]`` prints the port.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "reset", "truncated", "invalid")


def answer_for(prompt: str) -> str:
    return f"Teacher answer to: {prompt}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class FakeOpenAI:
    def __init__(self, fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS, seed: int = 0,
                 latency_s: float = 0.0, hang_s: float = 1.0, retry_after: str = "0",
                 error_message: str = "bad request", echo_auth_in_errors: bool = False,
                 record: bool = True):
        self.fault_rate, self.faults = fault_rate, faults
        self.latency_s, self.hang_s, self.retry_after = latency_s, hang_s, retry_after
        self.error_message, self.echo_auth_in_errors = error_message, echo_auth_in_errors
        self.record = record
        # This server's answers (default: the module's answer_for, which tests may monkeypatch).
        self.answer: Callable[[str], str] | None = None
        self.script: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.refuse_after: int | None = None
        self._distinct: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self.httpd.handle_error = lambda request, client_address: None  # injected faults are noisy
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the tests look at
    def prompts_seen(self, outcome: str | None = None) -> list[str]:
        with self._lock:
            return [r["prompt"] for r in self.requests if outcome is None or r["outcome"] == outcome]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _choose(self, prompt: str) -> str:
        with self._lock:
            if self.refuse_after is not None and prompt not in self._distinct:
                self._distinct.add(prompt)
                if len(self._distinct) > self.refuse_after:
                    self.always[prompt] = "refuse"
            if prompt in self.always:
                return self.always[prompt]
            plan = self.script.get(prompt)
            if plan:
                return plan.pop(0)
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.faults)
            return "ok"

    def _log(self, entry: dict[str, Any]) -> None:
        if self.record:
            with self._lock:
                self.requests.append(entry)


def _make_handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stalls

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(raw)
                prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                self._json(400, {"error": {"message": "malformed request body"}})
                return
            auth = self.headers.get("Authorization")
            action = server._choose(prompt)
            server._log({"prompt": prompt, "auth": auth, "body": body, "outcome": action,
                         "t": time.monotonic()})
            if server.latency_s:
                time.sleep(server.latency_s)
            if action == "ok":
                completion = (server.answer or answer_for)(prompt)
                usage = {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                         "completion_tokens": len(completion.split())}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                self._json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": completion},
                                 "finish_reason": "stop"}],
                    "usage": usage,
                })
            elif action == "429":
                ra = server.retry_after
                if ra == "date":  # an HTTP date one second ahead
                    ra = email.utils.formatdate(time.time() + 1.0, usegmt=True)
                self._json(429, {"error": {"message": "rate limited, slow down"}}, {"Retry-After": ra})
            elif action == "500":
                self._json(500, {"error": {"message": "internal error"}})
            elif action == "400":
                msg = server.error_message
                if server.echo_auth_in_errors:
                    msg += f" (you sent Authorization: {auth})"
                self._json(400, {"error": {"message": msg, "type": "invalid_request_error"}})
            elif action == "refuse":
                self._json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                 "finish_reason": "content_filter"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
                })
            elif action == "hang":
                time.sleep(server.hang_s)
                self.close_connection = True
            elif action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()  # drop the makefile reference so close() really closes (RST)
                self.connection.close()
                self.close_connection = True
            elif action == "truncated":
                data = b'{"choices": [{"message": {"role": "assistant", "content": "Teach'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) + 200))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True
            elif action == "invalid":
                self.send_response(200)
                data = b"<html>502 upstream gone</html>"
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                raise AssertionError(f"unknown action {action}")

        def finish(self) -> None:
            try:
                super().finish()
            except (OSError, ValueError):
                pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    srv = FakeOpenAI(latency_s=args.latency, record=False)
    print(srv.port, flush=True)
    try:
        srv.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
