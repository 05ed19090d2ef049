"""Configuration of the black-box teacher client (issue 4).

The API key is never a field: ``api_key_env`` holds the NAME of an environment variable and the key is
read from the environment when a request is made (:meth:`TeacherConfig.api_key`). So the key cannot
reach a repr, a log line, a config dump, the cache or a checkpoint through this object.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The one default response length (SPEC.md: max response tokens 1536): the teacher's max_tokens in
# collect and in training, and the student's data.max_response_tokens, all read it, so a corpus collected
# with the defaults shares its cache entries with an online run with the defaults.
DEFAULT_MAX_TOKENS = 1536


class TeacherConfigError(ValueError):
    """A bad teacher configuration value; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher lives, how to sample from it, and how hard to push it.

    Attributes:
      base_url: OpenAI-compatible API root, e.g. ``https://api.openai.com/v1`` or
        ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended.
      model: model name sent in every request (part of the cache key).
      api_key_env: NAME of the environment variable that holds the bearer token, or None for an
        endpoint without authentication. The value is read at request time, never stored.
      system_prompt: hidden system prompt prepended to every prompt that does not already start with a
        system message (a "teacher with a persona"). Part of the cache key.
      temperature, top_p, max_tokens: sampling parameters sent to the API (part of the cache key).
      n_samples: responses per prompt; each is its own request and cache entry (sample index 0..n-1).
      concurrency: worker threads, i.e. requests in flight at most.
      requests_per_s: client-side request rate limit (token bucket); 0 = unlimited.
      tokens_per_min: client-side token rate limit (prompt estimate + max_tokens per request,
        corrected by the reported usage); 0 = unlimited.
      timeout_s: per-request (connect and read) timeout.
      max_retries: retries after the first attempt for 429 / 5xx / timeouts / connection errors /
        unreadable bodies.
      backoff_base_s, backoff_max_s: exponential backoff with full jitter:
        ``sleep = uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt))``.
      retry_after_max_s: a server's Retry-After is honoured up to this many seconds.
      cache_path: SQLite response cache file, or None for no cache.
      max_requests, max_total_tokens: spending limits: HTTP attempts sent, and prompt + completion
        tokens reported, TOTALS for the cache file (every run that used it: the cache records what was
        spent), or for this client alone without a cache; 0 = unlimited. At the limit no new request is
        sent (``SpendingLimitReached``); responses already received stay in the cache, so a second run
        continues from it without paying for them again. Requests already in flight when the token
        limit is crossed still complete (at most ``concurrency`` x ``max_tokens`` over).
      retry_failed: ask again for prompts the cache records as refused (HTTP 400 / 413 / 422, no text,
        content filter) on an earlier run; by default they fail again at once, without a request.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    system_prompt: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    n_samples: int = 1
    concurrency: int = 8
    requests_per_s: float = 0.0
    tokens_per_min: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    cache_path: str | None = None
    max_requests: int = 0
    max_total_tokens: int = 0
    retry_failed: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> TeacherConfigError:
            return TeacherConfigError(f"TeacherConfig.{field}: {why} (got {getattr(self, field)!r})")

        if not isinstance(self.base_url, str) or not re.match(r"^https?://[^/\s]+", self.base_url):
            raise bad("base_url", "must be an http:// or https:// URL")
        if not isinstance(self.model, str) or not self.model.strip():
            raise bad("model", "must be a non-empty string")
        if self.api_key_env is not None and (
            not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env)
        ):
            # Guards against passing the key itself here: a key is rarely a valid variable name.
            raise TeacherConfigError(
                "TeacherConfig.api_key_env: must be the NAME of an environment variable "
                "(letters, digits, underscore), not the key itself"
            )
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise bad("system_prompt", "must be a string or None")
        _number(self, "temperature", lo=0.0, hi=2.0)
        _number(self, "top_p", lo=0.0, hi=1.0, lo_open=True)
        _integer(self, "max_tokens", lo=1)
        _integer(self, "n_samples", lo=1)
        _integer(self, "concurrency", lo=1)
        _number(self, "requests_per_s", lo=0.0)
        _number(self, "tokens_per_min", lo=0.0)
        _number(self, "timeout_s", lo=0.0, lo_open=True)
        _integer(self, "max_retries", lo=0)
        _integer(self, "max_requests", lo=0)
        _integer(self, "max_total_tokens", lo=0)
        _number(self, "backoff_base_s", lo=0.0)
        _number(self, "backoff_max_s", lo=0.0)
        _number(self, "retry_after_max_s", lo=0.0)
        if not isinstance(self.retry_failed, bool):
            raise bad("retry_failed", "must be a boolean")
        if self.backoff_max_s < self.backoff_base_s:
            raise bad("backoff_max_s", f"must be >= backoff_base_s ({self.backoff_base_s})")
        if self.cache_path is not None and (
            not isinstance(self.cache_path, str | os.PathLike) or not os.fspath(self.cache_path)
        ):
            raise bad("cache_path", "must be a path or None")

    @property
    def chat_url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def api_key(self) -> str | None:
        """Read the key from the environment now. Raises if the named variable is unset or empty."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TeacherConfigError(
                f"TeacherConfig.api_key_env: environment variable {self.api_key_env} is not set or empty"
            )
        return key

    def sampling_params(self) -> dict[str, Any]:
        """The sampling fields sent in each request body (and hashed into the cache key)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def _number(
    cfg: TeacherConfig, field: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> None:
    v = getattr(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TeacherConfigError(f"TeacherConfig.{field}: must be a finite number (got {v!r})")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        op = ">" if lo_open else ">="
        raise TeacherConfigError(f"TeacherConfig.{field}: must be {op} {lo} (got {v!r})")
    if hi is not None and v > hi:
        raise TeacherConfigError(f"TeacherConfig.{field}: must be <= {hi} (got {v!r})")


def _integer(cfg: TeacherConfig, field: str, lo: int) -> None:
    v = getattr(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TeacherConfigError(f"TeacherConfig.{field}: must be an integer (got {v!r})")
    if v < lo:
        raise TeacherConfigError(f"TeacherConfig.{field}: must be >= {lo} (got {v!r})")
