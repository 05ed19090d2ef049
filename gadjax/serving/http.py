"""HTTP front of gadjax.serve: a stdlib ThreadingHTTPServer whose request threads render and tokenize
the conversation, hand token ids to the engine (continuous.ContinuousEngine or engine.Engine) and wait on
its Future.

Routes: ``GET /health`` (no auth), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /v1/stats``
(engine counters), ``POST /v1/chat/completions``. With an API key every ``/v1`` route needs
``Authorization: Bearer <key>`` (else 401). Every error is JSON ``{"error": {...}}``; an exception in a
handler is a 500 and the server keeps serving. The access log names method, path and status only
(never headers, so never the key).
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gadjax.serving.continuous import ContinuousEngine
from gadjax.serving.engine import Engine, GenParams
from gadjax.serving.protocol import (
    ApiError,
    ChatRequest,
    apply_stop,
    bad_request,
    completion_body,
    parse_chat_request,
    usage,
    with_hidden_system_prompt,
)
from gadjax.serving.streaming import DONE_EVENT, ChoiceStream, chunk_event, error_event, usage_event

log = logging.getLogger("gadjax.serve")

MAX_BODY_BYTES = 8 << 20
MAX_N = 64


class ChatService:
    """Model-independent request handling: render, tokenize, generate, decode.

    One Engine may back several services (e.g. the same model with and without a hidden persona).
    ``system_prompt`` is the hidden system prompt (see protocol.with_hidden_system_prompt).
    """

    def __init__(
        self,
        engine: Engine | ContinuousEngine,
        tokenizer: Any,
        model_name: str,
        *,
        system_prompt: str | None = None,
        api_key: str | None = None,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.system_prompt = system_prompt or None
        self._api_key = api_key.encode() if api_key else None
        self.created = int(time.time())
        self._tok_lock = threading.Lock()  # HF fast tokenizers mutate padding/truncation state per call

    # ------------------------------------------------------------------ pieces (public for tests/tools)

    def check_auth(self, header: str | None) -> None:
        if self._api_key is None:
            return
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key):
            raise ApiError(
                401,
                "missing or invalid API key (send 'Authorization: Bearer <key>')",
                "authentication_error",
                "invalid_api_key",
            )

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the rendered conversation (hidden system prompt applied, generation prompt on)."""
        conv = with_hidden_system_prompt(messages, self.system_prompt)
        with self._tok_lock:
            try:
                text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            except Exception as e:  # jinja raise_exception(...) in templates, e.g. roles must alternate
                raise bad_request(f"chat template rejected the messages: {e}", "messages") from None
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gadjax"}

    def _submit(self, req: ChatRequest, on_tokens: Any = None) -> tuple[list[int], Any]:
        """Check the request against the server's limits and queue it; (prompt ids, Future)."""
        eng = self.engine
        max_tokens = eng.max_new_tokens if req.max_tokens is None else req.max_tokens
        if max_tokens > eng.max_new_tokens:
            raise bad_request(
                f"max_tokens={max_tokens} exceeds this server's limit {eng.max_new_tokens}", "max_tokens"
            )
        if req.n > MAX_N:
            raise bad_request(f"n={req.n} exceeds the limit {MAX_N}", "n")
        ids = self.prompt_ids(req.messages)
        if len(ids) > eng.max_prompt_tokens:
            raise bad_request(
                f"the prompt is {len(ids)} tokens, more than this server's limit of {eng.max_prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        params = GenParams(req.temperature, req.top_p, max_tokens, req.seed)
        return ids, eng.submit(ids, params, req.n, on_tokens=on_tokens)

    def decode(self, token_ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def chat(self, req: ChatRequest) -> dict[str, Any]:
        """A chat.completion body for a validated request (raises ApiError on limits)."""
        ids, fut = self._submit(req)
        gens = fut.result()
        choices = []
        for g in gens:
            text, stopped = apply_stop(self.decode(g.token_ids), req.stop)
            choices.append((text, "stop" if stopped else g.finish_reason))
        return completion_body(self.model_name, choices, len(ids), sum(g.num_tokens for g in gens))

    def stream(self, req: ChatRequest) -> Iterator[bytes]:
        """Server-sent events for a validated ``stream: true`` request, produced as the engine produces
        tokens: a role chunk per choice, content deltas, each choice's finish_reason, the usage chunk when
        asked, ``data: [DONE]``. Limit errors raise ApiError before the first event; a generation error
        after it is an ``{"error": ...}`` event."""
        events: queue.Queue[tuple[int, list[int]] | None] = queue.Queue()
        ids, fut = self._submit(req, on_tokens=lambda j, toks: events.put((j, toks)))
        fut.add_done_callback(lambda _: events.put(None))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name}
        eos = self.engine.eos_ids
        choices = [ChoiceStream(self.decode, eos, req.stop) for _ in range(req.n)]
        for j in range(req.n):
            yield chunk_event(base, j, {"role": "assistant", "content": ""})
        while (item := events.get()) is not None:  # the worker reports tokens before it resolves the Future
            j, toks = item
            if delta := choices[j].push(toks):
                yield chunk_event(base, j, {"content": delta})
        try:
            gens = fut.result()
        except Exception as e:
            log.exception("generation failed while streaming")
            err = ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            yield error_event(err.body())
            yield DONE_EVENT
            return
        for j, (g, ch) in enumerate(zip(gens, choices, strict=True)):
            if delta := ch.finish(g.token_ids):
                yield chunk_event(base, j, {"content": delta})
            yield chunk_event(base, j, {}, "stop" if ch.stopped else g.finish_reason)
        if req.include_usage:
            yield usage_event(base, usage(len(ids), sum(g.num_tokens for g in gens)))
        yield DONE_EVENT


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(service: ChatService, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server; ``server_address[1]`` is the port (0 = a free one)."""
    return _Server((host, port), _handler_class(service))


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _handler_class(service: ChatService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/ACK stall
        server_version = "gadjax.serve"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            log.debug("%s %s", self.address_string(), format % args)

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            # Method and path only; headers (the key) never reach the log.
            log.info("%s %s -> %s", self.command, self.path.split("?")[0], code)

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def _dispatch(self, fn: Any) -> None:
            try:
                fn()
            except ApiError as e:
                self._json(e.status, e.body())
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as e:
                log.exception("internal error on %s %s", self.command, self.path.split("?")[0])
                err = ApiError(
                    500, f"internal server error: {type(e).__name__}: {e}", "server_error", "internal_error"
                )
                try:
                    self._json(500, err.body())
                except OSError:
                    self.close_connection = True

        def _read_body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                raise ApiError(411, "Content-Length is required", code="length_required")
            try:
                n = int(length)
            except ValueError:
                self.close_connection = True
                raise bad_request(f"bad Content-Length {length!r}") from None
            if n < 0 or n > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(413, f"request body of {n} bytes exceeds {MAX_BODY_BYTES}", code="too_large")
            return self.rfile.read(n)

        def _path(self) -> str:
            return self.path.split("?")[0].rstrip("/") or "/"

        def do_GET(self) -> None:
            self._dispatch(self._get)

        def do_POST(self) -> None:
            self._dispatch(self._post)

        def _get(self) -> None:
            path = self._path()
            if path == "/health":
                return self._json(200, {"status": "ok", "model": service.model_name})
            if path.startswith("/v1/"):
                service.check_auth(self.headers.get("Authorization"))
            if path == "/v1/models":
                return self._json(200, service.models())
            if path.startswith("/v1/models/"):
                wanted = path[len("/v1/models/") :]
                if wanted != service.model_name:
                    raise ApiError(404, f"model {wanted!r} not found", code="model_not_found")
                return self._json(200, service.model_card())
            if path == "/v1/stats":
                return self._json(200, service.engine.stats())
            raise ApiError(404, f"no route GET {path}", code="not_found")

        def _post(self) -> None:
            path = self._path()
            body = self._read_body()  # read first so a keep-alive connection stays in sync
            if path.startswith("/v1/"):
                service.check_auth(self.headers.get("Authorization"))
            if path != "/v1/chat/completions":
                raise ApiError(404, f"no route POST {path}", code="not_found")
            req = parse_chat_request(body)
            if req.stream:
                return self._stream(service.stream(req))
            return self._json(200, service.chat(req))

        def _stream(self, events: Iterator[bytes]) -> None:
            """Send events as they come, in HTTP/1.1 chunked encoding (the connection stays reusable)."""
            first = next(events)  # limit errors raise here, before the status line: a plain JSON error
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for event in _chain(first, events):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):  # the client left: the engine finishes the rows
                self.close_connection = True
            except Exception:  # the status line is out: no JSON error can follow; end the connection
                log.exception("internal error while streaming %s", self.path.split("?")[0])
                self.close_connection = True

    return Handler
