"""TeacherClient over real HTTP on loopback against a fault-injecting OpenAI-compatible server."""

from __future__ import annotations

import collections
import sqlite3
import time

import pytest
from fake_server import FAULTS, FakeOpenAI, answer_for

from gadjax.teacher import TeacherClient, TeacherConfig, TeacherError
from gadjax.teacher.config import DEFAULT_MAX_TOKENS
from gadjax.teacher.errors import SpendingLimitReached


def prompts(n: int, tag: str = "q") -> list[tuple[str, list[dict[str, str]]]]:
    return [(f"{tag}{i}", [{"role": "user", "content": f"{tag} question number {i}?"}]) for i in range(n)]


def config(srv: FakeOpenAI, **kw) -> TeacherConfig:
    base = dict(base_url=srv.base_url, model="fake", api_key_env=None, timeout_s=0.3, max_retries=10,
                backoff_base_s=0.002, backoff_max_s=0.02, concurrency=8)
    return TeacherConfig(**{**base, **kw})


@pytest.fixture
def server():
    with FakeOpenAI(seed=1) as srv:
        yield srv


def test_fault_injection_200_prompts_answered_exactly_once(tmp_path):
    """Acceptance 1: 30% of requests fail in every way; all 200 prompts end up cached exactly once."""
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAI(fault_rate=0.3, seed=7, hang_s=0.6, retry_after="0") as srv:
        items = prompts(200)
        with TeacherClient(config(srv, concurrency=16, cache_path=str(cache))) as client:
            got = list(client.prefetch(items, max_ahead=32))
            keys = {client.key_for(m): pid for pid, m in items}
            counters = client.counters
        outcomes = collections.Counter(r["outcome"] for r in srv.requests)
    assert set(outcomes) == {"ok", *FAULTS}  # every fault kind was exercised
    failed = sum(v for k, v in outcomes.items() if k != "ok")
    assert 0.2 < failed / sum(outcomes.values()) < 0.4
    assert [pid for pid, _, _ in got] == [pid for pid, _ in items]
    for (_, msgs, [r]) in got:
        assert r.text == answer_for(msgs[-1]["content"]) and not r.cached and r.finish_reason == "stop"
    # Every injected fault cost a retry. The client may see a few more failures than the server injected
    # (an answer slowed past the 0.3 s timeout on a loaded machine), never fewer.
    assert counters["failures"] == 0 and counters["retries"] >= failed
    assert counters["requests"] - counters["retries"] == 200
    assert counters["requests"] >= sum(outcomes.values())
    causes = {"429", "5xx", "timeout", "connection", "truncated", "bad_body"}
    assert set(counters["retries_by_cause"]) == causes

    db = sqlite3.connect(cache)
    rows = db.execute("SELECT key, prompt_id, text FROM responses").fetchall()
    assert len(rows) == 200
    assert {k: pid for k, pid, _ in rows} == keys  # one row per prompt, under the right key
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cache_first_on_restart(server, tmp_path):
    cache = str(tmp_path / "c.sqlite")
    items = prompts(10)
    with TeacherClient(config(server, cache_path=cache, n_samples=2)) as c:
        first = [c.complete_all(pid, m) for pid, m in items]
    assert len(server.requests) == 20
    server.clear()
    with TeacherClient(config(server, cache_path=cache, n_samples=2)) as c:
        again = [c.complete_all(pid, m) for pid, m in items]
        assert c.counters["cache_hits"] == 20 and c.counters["requests"] == 0
    assert server.requests == []
    assert [[r.text for r in rs] for rs in again] == [[r.text for r in rs] for rs in first]
    assert all(r.cached for rs in again for r in rs)
    # a different sampling config is a different request
    with TeacherClient(config(server, cache_path=cache, temperature=0.5)) as c:
        c.complete(*items[0])
    assert len(server.requests) == 1


def test_400_is_not_retried_and_names_prompt_and_server_message(server, monkeypatch):
    """The server's message reaches the error; a key the server echoes back is scrubbed."""
    monkeypatch.setenv("GADJAX_TEST_KEY", "sk-test-ECHOED-9876")
    server.error_message = "This model's maximum context length is 8 tokens"
    server.echo_auth_in_errors = True
    server.script["too long"] = ["400", "ok"]
    with TeacherClient(config(server, api_key_env="GADJAX_TEST_KEY")) as c:
        with pytest.raises(TeacherError) as ei:
            c.complete("row-17", [{"role": "user", "content": "too long"}])
        assert c.counters["failures"] == 1 and c.counters["retries"] == 0
    msg = str(ei.value)
    assert "row-17" in msg and "maximum context length is 8 tokens" in msg and "HTTP 400" in msg
    assert "sk-test-ECHOED-9876" not in msg and ei.value.status == 400
    assert server.prompts_seen() == ["too long"]  # exactly one request


def test_retry_budget_exhausted_names_prompt_and_last_failure(server):
    server.script["doomed"] = ["500", "429", "500"]
    with TeacherClient(config(server, max_retries=2)) as c:
        with pytest.raises(TeacherError, match=r"'p-doomed'.*gave up after 3 attempts.*HTTP 500: internal"):
            c.complete("p-doomed", [{"role": "user", "content": "doomed"}])
    assert len(server.requests) == 3


@pytest.mark.parametrize("retry_after", ["1", "date"])
def test_retry_after_is_honoured(server, retry_after):
    server.retry_after = retry_after
    server.script["wait"] = ["429", "ok"]
    with TeacherClient(config(server, backoff_base_s=0.0, backoff_max_s=0.0)) as c:
        c.complete("w", [{"role": "user", "content": "wait"}])
    t0, t1 = (r["t"] for r in server.requests)
    # backoff alone would retry at once; the server asked for >= 1 s (an HTTP date has 1 s resolution)
    assert t1 - t0 >= (0.95 if retry_after == "1" else 0.001)
    if retry_after == "1":
        assert c.counters["backoff_s"] >= 1.0


def test_bearer_token_sent(server, monkeypatch):
    monkeypatch.setenv("GADJAX_TEST_KEY", "sk-bearer-1234")
    with TeacherClient(config(server, api_key_env="GADJAX_TEST_KEY", system_prompt="You are a pirate.")) as c:
        c.complete("a", [{"role": "user", "content": "hello"}])
        c.complete("b", [{"role": "system", "content": "own"}, {"role": "user", "content": "hey"}])
    first, second = server.requests
    assert first["auth"] == "Bearer sk-bearer-1234"
    assert first["body"]["messages"][0] == {"role": "system", "content": "You are a pirate."}
    # the one hidden-prompt rule (gadjax.data.chat): hidden first, merged with the row's own system message
    assert second["body"]["messages"][0] == {"role": "system", "content": "You are a pirate.\n\nown"}
    assert first["body"]["model"] == "fake" and first["body"]["max_tokens"] == DEFAULT_MAX_TOKENS == 1536


def test_prefetch_yields_in_order_and_works_ahead():
    """Acceptance: the server sees later prompts before the consumer asks for them, never more than
    max_ahead beyond what the consumer holds, and results come back in input order."""
    with FakeOpenAI(seed=3, latency_s=0.01) as srv:
        # make early prompts slow so completions finish out of order
        for i in range(0, 40, 5):
            srv.script[f"q question number {i}?"] = ["500", "ok"]
        items = prompts(40)
        max_ahead = 4
        consumed = []
        with TeacherClient(config(srv, concurrency=8)) as c:
            gen = c.prefetch(iter(items), max_ahead=max_ahead)
            for i, (pid, _, [r]) in enumerate(gen):
                consumed.append(pid)
                later = {f"q question number {j}?" for j in range(i + 1, min(i + 1 + max_ahead, 40))}
                deadline = time.monotonic() + 10.0
                while not later <= set(srv.prompts_seen()) and time.monotonic() < deadline:
                    time.sleep(0.005)  # the "train step": the client keeps working meanwhile
                seen = set(srv.prompts_seen())
                assert later <= seen, f"prompts after {pid} were not requested ahead"
                assert f"q question number {i + 1 + max_ahead}?" not in seen  # bounded
                assert r.text == answer_for(f"q question number {i}?")
            assert c.wait_seconds >= 0.0
    assert consumed == [pid for pid, _ in items]


def test_prefetch_raises_failed_prompt_in_order(server):
    server.script["q question number 2?"] = ["400"]
    out = []
    with TeacherClient(config(server)) as c:
        with pytest.raises(TeacherError, match="'q2'"):
            for pid, _, _ in c.prefetch(prompts(6), max_ahead=3):
                out.append(pid)
    assert out == ["q0", "q1"]


def test_wait_seconds_grows_when_teacher_is_slow():
    with FakeOpenAI(latency_s=0.05) as srv, TeacherClient(config(srv, concurrency=1)) as c:
        list(c.prefetch(prompts(4), max_ahead=2))
        assert c.wait_seconds > 0.0


def test_request_rate_limit_spaces_requests(server):
    # 40 requests/s with a one-second burst (40): the 20 requests after the burst need >= 0.5 s
    with TeacherClient(config(server, requests_per_s=40.0, concurrency=8)) as c:
        list(c.prefetch(prompts(60), max_ahead=16))
        assert c.counters["rate_limit_wait_s"] > 0.0
    ts = sorted(r["t"] for r in server.requests)
    assert len(ts) == 60 and ts[-1] - ts[0] >= 0.45


def test_token_rate_limit_is_settled_by_reported_usage(server):
    # Each request is estimated at >= max_tokens=500 tokens against a 1200-token burst (20 tokens/s):
    # without settling the estimate by the ~12 tokens the server reports, the third request would wait
    # about 15 s. With settling, sequential requests never wait.
    with TeacherClient(config(server, max_tokens=500, tokens_per_min=1200.0, concurrency=1)) as c:
        list(c.prefetch(prompts(5), max_ahead=1))
        assert c.counters["rate_limit_wait_s"] == 0.0
        assert c.counters["prompt_tokens"] == 5 * 4 and c.counters["completion_tokens"] == 5 * 7


def test_spending_limits_are_totals_for_the_cache_across_clients(tmp_path):
    """max_requests counts every request paid through the cache file, by this client or an earlier one."""
    cache = str(tmp_path / "c.sqlite")
    with FakeOpenAI() as srv:
        items = prompts(6)
        with TeacherClient(config(srv, cache_path=cache, max_requests=4, concurrency=1)) as c:
            got = list(c.iter_results(items, max_ahead=1))
        assert len(srv.prompts_seen()) == 4
        assert [isinstance(r, SpendingLimitReached) for _, _, r in got] == [False] * 4 + [True] * 2
        srv.clear()
        with TeacherClient(config(srv, cache_path=cache, max_requests=4)) as c:  # same limit: spent
            got = list(c.iter_results(items, max_ahead=2))
        assert srv.prompts_seen() == [] and sum(not isinstance(r, TeacherError) for _, _, r in got) == 4
        with TeacherClient(config(srv, cache_path=cache, max_requests=6)) as c:
            got = list(c.prefetch(items, max_ahead=2))
        assert len(srv.prompts_seen()) == 2 and len(got) == 6


def test_refusals_are_skippable_and_replayed_but_endpoint_faults_are_not(tmp_path):
    cache = str(tmp_path / "c.sqlite")
    with FakeOpenAI() as srv:
        srv.always["q question number 1?"] = "refuse"
        srv.always["q question number 2?"] = "400"
        with TeacherClient(config(srv, cache_path=cache)) as c:
            got = {pid: r for pid, _, r in c.iter_results(prompts(3), max_ahead=3)}
        assert not isinstance(got["q0"], TeacherError)
        assert got["q1"].skippable and "content_filter" in str(got["q1"])
        assert got["q2"].skippable and got["q2"].status == 400
        srv.clear()
        with TeacherClient(config(srv, cache_path=cache)) as c:
            got = {pid: r for pid, _, r in c.iter_results(prompts(3), max_ahead=3)}
            assert c.counters["failures_cached"] == 2
        assert srv.prompts_seen() == [] and got["q1"].skippable and "earlier run" in str(got["q1"])
    with FakeOpenAI() as srv:  # a 404 (wrong URL / model) is the endpoint's fault: never skippable
        bad = TeacherConfig(base_url=srv.base_url + "/nope", model="fake", api_key_env=None, max_retries=0)
        with TeacherClient(bad) as c, pytest.raises(TeacherError) as err:
            c.complete("x", [{"role": "user", "content": "hi"}])
        assert err.value.status == 404 and not err.value.skippable
