"""TeacherConfig validation, secret handling, and the retry / rate-limit building blocks."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from gadjax.teacher.config import TeacherConfig, TeacherConfigError
from gadjax.teacher.ratelimit import RateLimiter, TokenBucket
from gadjax.teacher.retry import backoff_seconds, is_retryable_status, parse_retry_after

URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("field,value", [
    ("base_url", "ftp://x"), ("model", " "), ("api_key_env", "sk-abc123-not-a-name"), ("temperature", -0.1),
    ("top_p", 0.0), ("top_p", 1.5), ("max_tokens", 0), ("n_samples", 0), ("concurrency", 0),
    ("concurrency", 2.0), ("requests_per_s", -1.0), ("timeout_s", 0.0), ("max_retries", -1),
    ("backoff_base_s", float("nan")), ("temperature", True),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(TeacherConfigError, match=f"TeacherConfig.{field}"):
        TeacherConfig(**{"base_url": URL, "model": "m", field: value})


def test_backoff_max_must_cover_base():
    with pytest.raises(TeacherConfigError, match="backoff_max_s"):
        TeacherConfig(base_url=URL, model="m", backoff_base_s=2.0, backoff_max_s=1.0)


def test_key_is_read_at_request_time_and_never_stored(monkeypatch):
    monkeypatch.delenv("GADJAX_TEST_KEY", raising=False)
    cfg = TeacherConfig(base_url=URL, model="m", api_key_env="GADJAX_TEST_KEY")
    with pytest.raises(TeacherConfigError, match="GADJAX_TEST_KEY is not set"):
        cfg.api_key()
    monkeypatch.setenv("GADJAX_TEST_KEY", "sk-live-0123456789")
    assert cfg.api_key() == "sk-live-0123456789"
    assert "sk-live" not in repr(cfg) and "sk-live" not in str(vars(cfg))
    monkeypatch.setenv("GADJAX_TEST_KEY", "sk-rotated")
    assert cfg.api_key() == "sk-rotated"  # rotation needs no new config
    assert TeacherConfig(base_url=URL, model="m", api_key_env=None).api_key() is None


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)  # RFC 9110 IMF-fixdate, 1 s resolution
    assert 28.0 <= parse_retry_after(date, now=now) <= 30.0
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


def test_backoff_full_jitter_bounds():
    rng = random.Random(0)
    for attempt in range(12):
        cap = min(5.0, 0.1 * 2 ** attempt)
        xs = [backoff_seconds(attempt, 0.1, 5.0, rng) for _ in range(200)]
        assert all(0.0 <= x <= cap for x in xs)
        assert max(xs) > 0.5 * cap  # full jitter spreads over the whole interval
    assert [is_retryable_status(s) for s in (429, 500, 503, 400, 401, 404, 200)] == [
        True, True, True, False, False, False, False]


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_token_bucket_rate_and_burst():
    clk = FakeClock()
    b = TokenBucket(rate=10.0, capacity=2.0, clock=clk, sleep=clk.sleep)
    waits = [b.acquire(1) for _ in range(12)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    # then one unit every 1/rate seconds: 10 more take 1 s in total
    assert clk.t == pytest.approx(1.0)
    clk.t += 100.0  # a long pause refills only up to capacity
    assert b.reserve(1) == 0.0 and b.reserve(1) == 0.0 and b.reserve(1) == pytest.approx(0.1)


def test_token_limit_is_settled_by_reported_usage():
    clk = FakeClock()
    lim = RateLimiter(tokens_per_min=600.0, clock=clk, sleep=clk.sleep)  # 10 tokens/s, burst 600
    assert lim.acquire(600) == 0.0
    lim.settle(600, 100)  # the server says only 100 were used: 500 come back
    assert lim.acquire(500) == 0.0
    assert lim.acquire(10) == pytest.approx(1.0)
    # an estimate above the burst is clamped to it instead of waiting forever
    assert lim.acquire(10_000) == pytest.approx(60.0)
