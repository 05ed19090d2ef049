"""Retry policy pieces: which failures are retried, backoff with full jitter, Retry-After parsing."""

from __future__ import annotations

import email.utils
import random
import time


def backoff_seconds(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
    ``uniform(0, min(max_s, base_s * 2**attempt))`` for the 0-based retry ``attempt``."""
    cap = min(max_s, base_s * (2.0 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3): delay-seconds or an HTTP-date.

    Returns None for a missing or unparseable header; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(0.0, seconds) if seconds == seconds else None  # NaN -> None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_retryable_status(status: int) -> bool:
    """429 and every 5xx are retried; other 4xx are the caller's fault and are not."""
    return status == 429 or 500 <= status <= 599
