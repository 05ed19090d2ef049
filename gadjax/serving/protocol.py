"""OpenAI chat-completions wire format for gadjax.serve: request validation, errors, response bodies.

Pure functions over dicts and bytes (no HTTP, no model), so every malformed-request path is a
:class:`ApiError` with a status and an OpenAI-style body ``{"error": {"message", "type", "code"}}``.

Accepted request fields: ``messages`` (roles system | developer (= system) | user | assistant; content a
string or a list of ``{"type": "text", "text": ...}`` parts), ``temperature`` [0, 2], ``top_p`` (0, 1],
``max_completion_tokens`` or ``max_tokens``, ``n``, ``stop`` (string or list of up to 4 strings),
``seed``, ``stream``, ``stream_options.include_usage``, ``model`` (informational). Other unknown fields
are ignored, as OpenAI-compatible servers do; features that would change the answer and that gadjax does
not implement (tools, logprobs, non-text response formats) are rejected with 400 rather than ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from typing import Any

from gadjax.data import chat
from gadjax.data.chat import ContentError, content_text

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4


class ApiError(Exception):
    """An HTTP error answered as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request. max_tokens None = the server's default."""

    messages: list[dict[str, str]]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
        raise bad_request(f"'{name}' must be a number, got {type(v).__name__}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad_request(f"'{name}'={v} is out of range {'(' if lo_open else '['}{lo}, {hi}]", name)
    return float(v)


def _integer(body: dict, name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise bad_request(f"'{name}' must be an integer, got {type(v).__name__}", name)
    if v < lo:
        raise bad_request(f"'{name}'={v} must be >= {lo}", name)
    return int(v)


def _content(msg: dict, i: int) -> str:
    try:  # the rule every reader of chat rows applies (gadjax.data.chat): text parts joined with "\n"
        return content_text(msg.get("content"), f"messages[{i}].content")
    except ContentError as e:
        raise bad_request(str(e), "messages") from None


def parse_messages(value: Any) -> list[dict[str, str]]:
    """Validate ``messages``: a non-empty list of {role, content}; roles normalised (developer -> system)."""
    if value is None:
        raise bad_request("'messages' is required", "messages", "missing_messages")
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object, got {type(m).__name__}", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(
                f"messages[{i}].role={role!r} is not supported; use one of {sorted(ROLES)}", "messages"
            )
        out.append({"role": ROLES[role], "content": _content(m, i)})
    return out


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and validate a request body; raises ApiError(400) naming the field on any problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(
            f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json"
        )
    messages = parse_messages(body.get("messages"))
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"'{name}' is not supported by gadjax.serve", name, "unsupported")
    if body.get("logprobs"):
        raise bad_request("'logprobs' is not supported by gadjax.serve", "logprobs", "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad_request(
            "only response_format {'type': 'text'} is supported", "response_format", "unsupported"
        )
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    n = _integer(body, "n", 1)
    seed = _integer(body, "seed", -(2**63))
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise bad_request(f"'stop' takes up to {MAX_STOP} non-empty strings", "stop")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    return ChatRequest(
        messages=messages,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        max_tokens=max_tokens,
        n=1 if n is None else n,
        stop=stops,
        seed=seed if seed is None else seed % (2**32),  # jax keys take 32-bit seeds
        stream=stream,
        include_usage=bool(opts and opts.get("include_usage")),
        model=model,
    )


def with_hidden_system_prompt(messages: list[dict[str, str]], hidden: str | None) -> list[dict[str, str]]:
    """The conversation the model sees: gadjax's one rule for a hidden system prompt (hidden text first,
    merged with the client's own leading system message into one; gadjax.data.chat)."""
    return chat.with_hidden_system_prompt(messages, hidden)


def apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest occurrence of any stop string; (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def completion_body(
    model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A ``chat.completion`` object; choices = [(text, finish_reason)]."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
