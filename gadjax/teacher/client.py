"""OpenAI-compatible chat-completions client for a black-box teacher (issue 4; SPEC.md: the teacher is
only text over an API).

- One ``requests.Session`` per worker thread (connection reuse without sharing a session across
  threads), a bounded ``ThreadPoolExecutor`` (``config.concurrency``), client-side rate limits.
- Retries with exponential backoff and full jitter on 429, 5xx, timeouts, connection errors and
  unreadable (invalid or truncated JSON) bodies, honouring Retry-After. Other 4xx are not retried.
- The persistent cache (:mod:`gadjax.teacher.cache`) is consulted first and written (committed) before
  a response is returned, so a restart never pays for a response twice.
- :meth:`TeacherClient.prefetch` works ahead of the trainer through a bounded window and yields in
  input order; :attr:`TeacherClient.wait_seconds` says how long the consumer was blocked.

Secrets: the key is read from the environment per request, sent only in the Authorization header, and
scrubbed from every error message and log line (a server could echo it back).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import requests

from gadjax.data.chat import with_hidden_system_prompt
from gadjax.teacher.cache import ResponseCache, cache_key
from gadjax.teacher.config import TeacherConfig
from gadjax.teacher.errors import PROMPT_FAULT_STATUSES, SpendingLimitReached, TeacherError, _Retry
from gadjax.teacher.ratelimit import RateLimiter
from gadjax.teacher.retry import backoff_seconds, is_retryable_status, parse_retry_after

log = logging.getLogger("gadjax.teacher")

Messages = Sequence[Mapping[str, str]]
__all__ = ["SpendingLimitReached", "TeacherClient", "TeacherError", "TeacherResponse"]

_MAX_DETAIL = 300  # characters of a server message kept in errors and logs


@dataclasses.dataclass(frozen=True)
class TeacherResponse:
    text: str
    finish_reason: str | None
    usage: dict[str, Any]
    cached: bool


class TeacherClient:
    """Thread-safe teacher client. Use as a context manager or call :meth:`close`."""

    def __init__(self, config: TeacherConfig, cache: ResponseCache | None = None):
        self.config = config
        self.cache = (
            cache if cache is not None else (ResponseCache(config.cache_path) if config.cache_path else None)
        )
        self._limiter = RateLimiter(config.requests_per_s, config.tokens_per_min)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool: cf.ThreadPoolExecutor | None = None
        self._rng = random.Random()
        self._wait_s = 0.0
        self._c: collections.Counter[str] = collections.Counter()
        # One request per cache key at a time: a prompt repeated in the data (or asked by two threads at
        # once) waits for the first answer and reads it from the cache instead of paying again.
        self._key_locks: dict[str, threading.Lock] = {}
        # Spending limits are totals for the cache file (every run that used it), not for this process.
        spent = self.cache.spend() if self.cache is not None else {}
        self._spent_before = {
            "requests": int(spent.get("requests", 0)),
            "tokens": int(spent.get("prompt_tokens", 0)) + int(spent.get("completion_tokens", 0)),
        }

    # ------------------------------------------------------------------ public API

    def messages_for(self, messages: Messages) -> list[dict[str, str]]:
        """The messages actually sent: the configured hidden system prompt applied by the one rule
        gadjax uses everywhere (:func:`gadjax.data.chat.with_hidden_system_prompt`)."""
        return with_hidden_system_prompt(messages, self.config.system_prompt)

    def key_for(self, messages: Messages, sample_index: int = 0) -> str:
        """Cache key of (config endpoint, model, sent messages, sampling params, sample index)."""
        cfg = self.config
        return cache_key(
            cfg.base_url, cfg.model, self.messages_for(messages), cfg.sampling_params(), sample_index
        )

    def complete(self, prompt_id: str, messages: Messages, sample_index: int = 0) -> TeacherResponse:
        """One response for one prompt: from the cache, else from the API (then cached, committed)."""
        sent = self.messages_for(messages)
        cfg = self.config
        key = cache_key(cfg.base_url, cfg.model, sent, cfg.sampling_params(), sample_index)
        if self.cache is None:
            return self._complete(prompt_id, sent, sample_index, key)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            return self._complete(prompt_id, sent, sample_index, key)

    def _complete(self, prompt_id: str, sent: Messages, sample_index: int, key: str) -> TeacherResponse:
        cfg = self.config
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                return TeacherResponse(hit.text, hit.finish_reason, hit.usage, cached=True)
            failed = None if cfg.retry_failed else self.cache.get_failure(key)
            if failed is not None and failed.permanent:  # asking again would be refused again, and paid
                self._count(failures=1, failures_cached=1)
                raise TeacherError(
                    prompt_id,
                    f"{failed.message} (refused on an earlier run, recorded in the cache; not asked again "
                    "unless retry_failed / collect --retry-failed)",
                    status=failed.status,
                    skippable=True,
                )
        try:
            text, finish, usage = self._fetch(prompt_id, sent, sample_index)
        except TeacherError as e:
            if self.cache is not None and e.skippable:
                self.cache.put_failure(key, str(prompt_id), e.status, e.detail, permanent=not e.retryable)
            raise
        if self.cache is not None:
            stored, _ = self.cache.put(key, text, finish, usage, prompt_id=str(prompt_id))
            text, finish, usage = stored.text, stored.finish_reason, stored.usage
            self.cache.clear_failure(key)  # answered after all (a retry of an earlier failure)
        self._count(responses=1)
        return TeacherResponse(text, finish, dict(usage), cached=False)

    def complete_all(self, prompt_id: str, messages: Messages) -> list[TeacherResponse]:
        """``config.n_samples`` responses for one prompt, fetched concurrently on the pool."""
        futs = self._submit(prompt_id, messages)
        return [f.result() for f in futs]

    def prefetch(
        self, items: Iterable[tuple[str, Messages]], max_ahead: int
    ) -> Iterator[tuple[str, Messages, list[TeacherResponse]]]:
        """Yield ``(prompt_id, messages, responses)`` in input order while up to ``max_ahead`` later
        prompts are requested in the background (all ``n_samples`` of each).

        A prompt that fails after the retry budget raises its :class:`TeacherError` when its turn
        comes. Time the consumer spends blocked on a result adds to :attr:`wait_seconds`.
        """
        for pid, msgs, res in self.iter_results(items, max_ahead):
            if isinstance(res, TeacherError):
                raise res
            yield pid, msgs, res

    def iter_results(
        self, items: Iterable[tuple[str, Messages]], max_ahead: int
    ) -> Iterator[tuple[str, Messages, list[TeacherResponse] | TeacherError]]:
        """Like :meth:`prefetch` but a failed prompt is yielded as its error instead of raised."""
        if not isinstance(max_ahead, int) or max_ahead < 1:
            raise ValueError(f"prefetch: max_ahead must be an integer >= 1, got {max_ahead!r}")
        it = iter(items)
        window: collections.deque[tuple[str, Messages, list[cf.Future]]] = collections.deque()

        def top_up() -> None:
            while len(window) < max_ahead:
                try:
                    pid, msgs = next(it)
                except StopIteration:
                    return
                window.append((pid, msgs, self._submit(pid, msgs)))

        try:
            top_up()
            while window:
                pid, msgs, futs = window.popleft()
                t0 = time.perf_counter()
                result: list[TeacherResponse] | TeacherError
                try:
                    result = [f.result() for f in futs]
                except TeacherError as e:
                    result = e
                finally:
                    with self._lock:
                        self._wait_s += time.perf_counter() - t0
                top_up()  # refill before handing over: the pool works while the consumer does
                yield pid, msgs, result
        finally:
            for _, _, futs in window:
                for f in futs:
                    f.cancel()

    @property
    def wait_seconds(self) -> float:
        """Total seconds prefetch consumers spent blocked waiting for the teacher."""
        with self._lock:
            return self._wait_s

    @property
    def counters(self) -> dict[str, Any]:
        """Snapshot: requests (HTTP attempts), retries (total and ``retries_<cause>``), cache_hits,
        responses (fresh), failures (of which failures_cached: refusals replayed from the cache),
        prompt_tokens, completion_tokens (this client's), rate_limit_wait_s, backoff_s."""
        with self._lock:
            c = dict(self._c)
        out = {
            k: c.get(k, 0)
            for k in (
                "requests",
                "retries",
                "cache_hits",
                "responses",
                "failures",
                "failures_cached",
                "prompt_tokens",
                "completion_tokens",
            )
        }
        out["retries_by_cause"] = {
            k[len("retries_") :]: v for k, v in sorted(c.items()) if k.startswith("retries_")
        }
        out["rate_limit_wait_s"] = round(c.get("rate_limit_wait_s", 0.0), 3)
        out["backoff_s"] = round(c.get("backoff_s", 0.0), 3)
        out["wait_seconds"] = round(self.wait_seconds, 3)
        return out

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions = self._sessions, []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for s in sessions:
            s.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _count(self, **kv: float) -> None:
        with self._lock:
            for k, v in kv.items():
                self._c[k] += v

    def _reserve_request(self, prompt_id: str) -> None:
        """Count one request, or raise SpendingLimitReached when a limit is reached (under the lock, so
        concurrent workers never send more than max_requests)."""
        cfg = self.config
        with self._lock:
            requests = self._spent_before["requests"] + self._c["requests"]
            tokens = self._spent_before["tokens"] + int(
                self._c["prompt_tokens"] + self._c["completion_tokens"]
            )
            over = (cfg.max_requests and requests >= cfg.max_requests) or (
                cfg.max_total_tokens and tokens >= cfg.max_total_tokens
            )
            if not over:
                self._c["requests"] += 1
            else:
                self._c["limit_refusals"] += 1
        if not over:
            if self.cache is not None:  # counted before it is sent: a crash never under-counts
                self.cache.add_spend(requests=1)
            return
        raise SpendingLimitReached(
            prompt_id,
            {"requests": requests, "tokens": tokens},
            {"max_requests": cfg.max_requests, "max_total_tokens": cfg.max_total_tokens},
            getattr(self.cache, "path", cfg.cache_path) if self.cache is not None else None,
        )

    def _executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="teacher")
            return self._pool

    def _submit(self, prompt_id: str, messages: Messages) -> list[cf.Future]:
        pool = self._executor()
        return [pool.submit(self.complete, prompt_id, messages, s) for s in range(self.config.n_samples)]

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def _redact(self, text: str, key: str | None) -> str:
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return text[:_MAX_DETAIL] + ("..." if len(text) > _MAX_DETAIL else "")

    def _estimate_tokens(self, sent: Messages) -> int:
        # ~4 characters per token plus per-message overhead; corrected by the real usage afterwards.
        chars = sum(len(m["content"]) for m in sent)
        return chars // 4 + 4 * len(sent) + self.config.max_tokens

    def _fetch(
        self, prompt_id: str, sent: Messages, sample_index: int
    ) -> tuple[str, str | None, dict[str, Any]]:
        """POST with retries; returns (text, finish_reason, usage) or raises TeacherError."""
        cfg = self.config
        try:
            key = cfg.api_key()
        except ValueError as e:
            self._count(failures=1)
            raise TeacherError(prompt_id, str(e)) from None
        body = {"model": cfg.model, "messages": list(sent), **cfg.sampling_params()}
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        attempts = cfg.max_retries + 1
        last: _Retry | None = None
        for attempt in range(attempts):
            self._reserve_request(prompt_id)  # the spending limits; counts the request
            est = self._estimate_tokens(sent)
            waited = self._limiter.acquire(est)
            self._count(rate_limit_wait_s=waited)
            try:
                text, finish, usage = self._post_once(prompt_id, body, headers, key)
            except _Retry as r:
                self._limiter.settle(est, 0)  # a failed attempt consumed no completion tokens
                last = r
                if attempt + 1 >= attempts:
                    break
                delay = backoff_seconds(attempt, cfg.backoff_base_s, cfg.backoff_max_s, self._rng)
                if r.retry_after is not None:
                    delay = max(delay, min(r.retry_after, cfg.retry_after_max_s))
                self._count(retries=1, backoff_s=delay, **{f"retries_{r.cause}": 1})
                log.info(
                    "prompt %s sample %d: %s; retry %d/%d in %.2fs",
                    prompt_id,
                    sample_index,
                    self._redact(str(r), key),
                    attempt + 1,
                    cfg.max_retries,
                    delay,
                )
                time.sleep(delay)
                continue
            except TeacherError:
                self._limiter.settle(est, 0)
                self._count(failures=1)
                raise
            total = usage.get("total_tokens")
            if not isinstance(total, int):
                p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
                total = p + c if isinstance(p, int) and isinstance(c, int) else None
            self._limiter.settle(est, total)
            p_tok, c_tok = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
            self._count(prompt_tokens=p_tok, completion_tokens=c_tok)
            if self.cache is not None:
                self.cache.add_spend(prompt_tokens=p_tok, completion_tokens=c_tok)
            return text, finish, usage
        self._count(failures=1)
        assert last is not None
        err = TeacherError(
            prompt_id,
            f"gave up after {attempts} attempts; last failure: {self._redact(str(last), key)}",
            retryable=True,
            skippable=True,
        )
        log.warning("%s", err)
        raise err

    def _post_once(
        self, prompt_id: str, body: dict[str, Any], headers: dict[str, str], key: str | None
    ) -> tuple[str, str | None, dict[str, Any]]:
        cfg = self.config
        try:
            resp = self._session().post(
                cfg.chat_url, json=body, headers=headers, timeout=(cfg.timeout_s, cfg.timeout_s)
            )
            raw = resp.content  # read the whole body inside the try: truncation raises here
        except requests.Timeout as e:
            raise _Retry("timeout", type(e).__name__) from None
        except requests.exceptions.ChunkedEncodingError as e:  # body shorter than its Content-Length
            raise _Retry("truncated", f"{type(e).__name__}: {e}") from None
        except requests.RequestException as e:  # connection refused / reset, truncated chunked body
            raise _Retry("connection", f"{type(e).__name__}: {e}") from None
        status = resp.status_code
        if status != 200:
            detail = f"HTTP {status}: {_server_message(raw)}"
            if is_retryable_status(status):
                cause = "429" if status == 429 else "5xx"
                raise _Retry(cause, detail, parse_retry_after(resp.headers.get("Retry-After")))
            raise TeacherError(
                prompt_id, self._redact(detail, key), status=status, skippable=status in PROMPT_FAULT_STATUSES
            )
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("bad_body", f"unreadable response body ({len(raw)} bytes)") from None
        text = message.get("content") if isinstance(message, dict) else None
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        if not isinstance(text, str) or not text:
            # A refusal / content filter: asking again costs money and returns the same. Not retried.
            raise TeacherError(
                prompt_id,
                f"response has no text content (finish_reason={finish!r})",
                status=status,
                skippable=True,
            )
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return text, finish if isinstance(finish, str) else None, usage


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _server_message(raw: bytes) -> str:
    """The human message of an error body: OpenAI ``{"error": {"message"}}`` and common variants."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:_MAX_DETAIL].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        for v in (err, data.get("message"), data.get("detail")):
            if isinstance(v, str):
                return v
    return json.dumps(data)[:_MAX_DETAIL]
