"""The collect CLI as a real subprocess against a loopback server: crash-resume, secrets, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from fake_server import FakeOpenAI, answer_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "sk-gadjax-SECRET-7f3a9c1e55"


def write_prompts(path, n: int) -> list[str]:
    texts = [f"prompt {i}: what is {i} squared?" for i in range(n)]
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            # mix the three accepted input formats
            row = ({"prompt": t} if i % 3 == 0 else {"messages": [{"role": "user", "content": t}]}
                   if i % 3 == 1 else {"content": [{"role": "user", "content": t}], "teacher_response": "x"})
            f.write(json.dumps(row) + "\n")
    return texts


def cli(srv: FakeOpenAI, prompts, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gadjax.teacher.collect", "--prompts", str(prompts), "--out", str(out),
            "--base-url", srv.base_url, "--model", "fake", "--timeout", "0.5", "--backoff-base", "0.002",
            "--backoff-max", "0.02", "--max-retries", "12", "--no-progress", *extra]


def env(**kw: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO, **kw}


def cached_prompt_ids(cache) -> set[str]:
    db = sqlite3.connect(cache)
    try:
        return {r[0] for r in db.execute("SELECT prompt_id FROM responses")}
    finally:
        db.close()


def test_sigkill_midway_then_resume_requests_nothing_cached(tmp_path):
    """Acceptance 2: kill -9 mid-collection; the restart re-requests no cached prompt; cache intact."""
    prompts, out, cache = tmp_path / "p.jsonl", tmp_path / "corpus.jsonl", tmp_path / "c.sqlite"
    texts = write_prompts(prompts, 200)
    with FakeOpenAI(latency_s=0.02) as srv:
        proc = subprocess.Popen(cli(srv, prompts, out, "--cache", str(cache), "--concurrency", "2"),
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        n = 0
        while n < 50 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            if cache.exists():
                try:
                    n = len(cached_prompt_ids(cache))
                except sqlite3.OperationalError:  # table not created yet
                    pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        cached = cached_prompt_ids(cache)
        assert 50 <= len(cached) < 200, "the kill did not land midway"
        assert not out.exists()  # only the .partial file can be half-written
        srv.clear()
        res = subprocess.run(cli(srv, prompts, out, "--cache", str(cache), "--concurrency", "4"), env=env(),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        requested = srv.prompts_seen()
    ids = [f"p.jsonl:{i + 1}" for i in range(200)]
    text_of = dict(zip(ids, texts, strict=True))
    assert not {text_of[i] for i in cached} & set(requested)  # zero repeated requests
    assert sorted(requested) == sorted(text_of[i] for i in ids if i not in cached)  # the rest once each
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["cache_hits"] == len(cached) and summary["requests"] == 200 - len(cached)
    db = sqlite3.connect(cache)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 200
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ids
    assert [r["response"] for r in rows] == [answer_for(t) for t in texts]
    assert rows[2]["messages"] == [{"role": "user", "content": texts[2]}]
    assert not (tmp_path / "corpus.jsonl.partial").exists()


def test_api_key_never_written_anywhere(tmp_path):
    """Acceptance 3: the key is sent as a Bearer token and appears in no file of the run directory,
    even when the server echoes it back in an error message."""
    run = tmp_path / "run"
    run.mkdir()
    prompts = tmp_path / "p.jsonl"
    texts = write_prompts(prompts, 40)
    with FakeOpenAI(fault_rate=0.3, seed=5, hang_s=0.8, echo_auth_in_errors=True,
                    error_message="invalid prompt") as srv:
        srv.script[texts[7]] = ["400"]
        with open(run / "stdout.txt", "w") as so, open(run / "stderr.txt", "w") as se:
            rc = subprocess.run(
                cli(srv, prompts, run / "corpus.jsonl", "--cache", str(run / "cache.sqlite"),
                    "--log-file", str(run / "collect.log"), "--api-key-env", "GADJAX_TEACHER_KEY",
                    "--system-prompt", "You are terse.", "--allow-failures"),
                env=env(GADJAX_TEACHER_KEY=KEY), stdout=so, stderr=se, timeout=120).returncode
        auths = {r["auth"] for r in srv.requests}
    assert rc == 0
    assert auths == {f"Bearer {KEY}"}
    log = (run / "collect.log").read_text()
    assert "retry" in log and "invalid prompt" in log and "p.jsonl:8" in log  # the log is not empty
    assert "Bearer ***" in log  # the server's echo of the key was scrubbed, not dropped
    files = [os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs]
    assert len(files) >= 4
    for path in files:
        with open(path, "rb") as f:
            assert KEY.encode() not in f.read(), f"API key leaked into {path}"
    corpus = (run / "corpus.jsonl").read_text().splitlines()
    assert len(corpus) == 39  # the 400 prompt is left out and reported
    assert all("You are terse." not in line for line in corpus)  # the hidden persona stays hidden


def test_missing_key_variable_fails_fast(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 3)
    with FakeOpenAI() as srv:
        res = subprocess.run(cli(srv, prompts, tmp_path / "o.jsonl", "--api-key-env", "NOT_SET_ANYWHERE_X"),
                             env=env(), capture_output=True, text=True, timeout=60)
        assert srv.requests == []
    assert res.returncode == 2 and "NOT_SET_ANYWHERE_X is not set" in res.stderr


@pytest.mark.parametrize("skip", [False, True])
def test_bad_prompt_rows(tmp_path, skip):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"prompt": "ok one"}\n{"prompt": 3}\n{"messages": []}\nnot json\n'
                        b'{"prompt": "ok two"}\n')
    out = tmp_path / "o.jsonl"
    with FakeOpenAI() as srv:
        res = subprocess.run(cli(srv, prompts, out, *(["--skip-bad-rows"] if skip else [])), env=env(),
                             capture_output=True, text=True, timeout=60)
        seen = srv.prompts_seen()
    if not skip:
        assert res.returncode == 2 and "p.jsonl:2" in res.stderr and "'prompt'" in res.stderr
        assert seen == [] and not out.exists()
    else:
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["bad_rows"]["skipped"] == 3 and summary["prompts"] == 2
        assert sorted(seen) == ["ok one", "ok two"] and len(out.read_text().splitlines()) == 2


def test_failures_without_allow_write_no_corpus(tmp_path):
    prompts = tmp_path / "p.jsonl"
    texts = write_prompts(prompts, 5)
    out = tmp_path / "o.jsonl"
    out.write_text("previous corpus\n")
    with FakeOpenAI() as srv:
        srv.script[texts[1]] = ["400"]
        res = subprocess.run(cli(srv, prompts, out), env=env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "p.jsonl:2" in res.stderr and "no corpus written" in res.stderr
    assert out.read_text() == "previous corpus\n"  # untouched, never half-replaced
    assert not (tmp_path / "o.jsonl.partial").exists()


def test_spending_limit_is_cumulative_for_the_cache_with_a_partial_corpus_and_status(tmp_path):
    """--max-requests K is the total for the cache: exactly K requests reach the server, exit 3 with what
    was spent, and the K answers are written to <out>.partial with the count still missing; a rerun with
    the SAME limit pays nothing more; --status reports answered / spent / cost without a request; a rerun
    with a higher total pays only for the prompts not answered yet."""
    prompts, out, cache = tmp_path / "p.jsonl", tmp_path / "o.jsonl", tmp_path / "c.sqlite"
    texts = write_prompts(prompts, 12)
    with FakeOpenAI() as srv:
        argv = cli(srv, prompts, out, "--cache", str(cache), "--concurrency", "4", "--max-requests", "5")
        res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 3, res.stderr
        assert len(srv.prompts_seen()) == 5
        assert "spending limit reached: 5 requests" in res.stderr and "raise the limit" in res.stderr
        assert not out.exists() and len(cached_prompt_ids(cache)) == 5  # all 5 paid answers kept
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["requests"] == 5 and summary["spending_limit"]
        assert summary["missing_prompts"] == 7 and summary["samples_written"] == 5
        partial = [json.loads(line) for line in (tmp_path / "o.jsonl.partial").read_text().splitlines()]
        assert sorted(r["response"] for r in partial) == sorted(
            answer_for(t) for t in texts if t in srv.prompts_seen()
        )
        assert "5 samples; 7 prompts missing" in res.stderr

        srv.clear()  # the same limit again: the cache says it is spent
        res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 3 and srv.prompts_seen() == [], res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["samples_written"] == 5  # from the cache

        status = [*cli(srv, prompts, out, "--cache", str(cache), "--status"), "--price-input-per-mtok", "2",
                  "--price-output-per-mtok", "8"]  # fmt: skip
        res = subprocess.run(status, env=env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and srv.prompts_seen() == [], res.stderr
        st = json.loads(res.stdout.strip().splitlines()[-1])
        db = sqlite3.connect(cache)
        usages = [json.loads(u) for (u,) in db.execute("SELECT usage FROM responses")]
        db.close()
        p_tok = sum(u["prompt_tokens"] for u in usages)
        c_tok = sum(u["completion_tokens"] for u in usages)
        spent = (st["answered"], st["requests"], st["prompt_tokens"], st["completion_tokens"])
        assert spent == (5, 5, p_tok, c_tok) and p_tok > 0 and c_tok > 0
        assert st["estimated_cost_usd"] == pytest.approx((2 * p_tok + 8 * c_tok) / 1e6)
        assert st["prompts"]["samples"] == {"answered": 5, "failed": 0, "to_do": 7}
        assert "5 answered" in res.stderr and "7 to do" in res.stderr

        argv = cli(srv, prompts, out, "--cache", str(cache), "--max-requests", "12")
        res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert len(srv.prompts_seen()) == 7  # only the 7 not paid for before
    responses = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    assert responses == [answer_for(t) for t in texts]


def test_refused_prompts_are_recorded_and_not_paid_again(tmp_path):
    """A content-filter refusal is a failure recorded in the cache: the rerun fails it again at once
    without a request (--status counts it); --retry-failed asks again."""
    prompts, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    texts = write_prompts(prompts, 4)
    with FakeOpenAI() as srv:
        srv.always[texts[2]] = "refuse"
        res = subprocess.run(cli(srv, prompts, out, "--allow-failures"), env=env(), capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0 and "content_filter" in res.stderr, res.stderr
        assert len(out.read_text().splitlines()) == 3
        srv.clear()
        res = subprocess.run(cli(srv, prompts, out, "--allow-failures"), env=env(), capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0 and srv.prompts_seen() == [], res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["failures_cached"] == 1
        res = subprocess.run(cli(srv, prompts, out, "--status"), env=env(), capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        st = json.loads(res.stdout.strip().splitlines()[-1])
        assert st["failed_permanent"] == 1 and st["prompts"]["samples"]["failed"] == 1
        del srv.always[texts[2]]
        res = subprocess.run(cli(srv, prompts, out, "--retry-failed"), env=env(), capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0 and srv.prompts_seen() == [texts[2]], res.stderr
    assert len(out.read_text().splitlines()) == 4


def test_token_limit_stops_before_the_next_request(tmp_path):
    prompts, out, cache = tmp_path / "p.jsonl", tmp_path / "o.jsonl", tmp_path / "c.sqlite"
    write_prompts(prompts, 6)
    with FakeOpenAI() as srv:
        argv = cli(srv, prompts, out, "--cache", str(cache), "--concurrency", "1", "--max-total-tokens", "1")
        res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 3, res.stderr
        assert len(srv.prompts_seen()) == 1  # the first request crossed the limit; none after it
    assert "max_total_tokens=1" in res.stderr
