"""Client-side rate limits: token buckets for requests/s and tokens/min.

A bucket holds at most ``capacity`` units and refills at ``rate`` units per second. ``acquire(n)``
reserves ``n`` units immediately (the level may go negative) and sleeps until the debt is repaid, so
callers are served in arrival order and no caller can starve. Unit counts above the capacity are
clamped to the capacity, so one huge request waits for a full bucket instead of forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """A thread-safe token bucket; ``rate`` units per second, burst ``capacity`` (starts full)."""

    def __init__(
        self,
        rate: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"TokenBucket needs rate > 0 and capacity > 0, got {rate}, {capacity}")
        self.rate, self.capacity = float(rate), float(capacity)
        self._clock, self._sleep = clock, sleep
        self._level = self.capacity
        self._t = clock()
        self._lock = threading.Lock()

    def reserve(self, n: float) -> float:
        """Take ``n`` units now; return how many seconds the caller must wait before using them."""
        n = min(float(n), self.capacity)
        with self._lock:
            now = self._clock()
            self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
            self._t = now
            self._level -= n
            return max(0.0, -self._level / self.rate)

    def acquire(self, n: float = 1.0) -> float:
        """Reserve ``n`` units and sleep until they are available; returns the seconds slept."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)
        return wait

    def adjust(self, delta: float) -> None:
        """Correct an estimate after the fact: ``delta`` > 0 takes more units, < 0 gives some back."""
        with self._lock:
            self._level = min(self.capacity, self._level - delta)


class RateLimiter:
    """requests/s and tokens/min limits together; a zero rate disables that limit."""

    def __init__(
        self,
        requests_per_s: float = 0.0,
        tokens_per_min: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        # Request burst of one second's worth (at least one request); token burst of one minute's worth,
        # which is how providers state token limits.
        self.requests = (
            TokenBucket(requests_per_s, max(1.0, requests_per_s), clock, sleep)
            if requests_per_s > 0
            else None
        )
        self.tokens = (
            TokenBucket(tokens_per_min / 60.0, tokens_per_min, clock, sleep) if tokens_per_min > 0 else None
        )

    def acquire(self, estimated_tokens: int) -> float:
        """Wait for one request slot and ``estimated_tokens`` tokens; returns the seconds waited."""
        waited = 0.0
        if self.requests is not None:
            waited += self.requests.acquire(1.0)
        if self.tokens is not None:
            waited += self.tokens.acquire(float(estimated_tokens))
        return waited

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Replace a request's token estimate by the usage the server reported."""
        if self.tokens is not None and actual_tokens is not None:
            self.tokens.adjust(float(actual_tokens - estimated_tokens))
