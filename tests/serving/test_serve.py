"""gadjax.serve over real HTTP on loopback, driven by the official `openai` client, `requests` and gadjax's
own TeacherClient (issue 4, acceptance 4); the CLI as a subprocess is in test_serve_cli.py. Tiny random
Qwen2 model, float32.

Compile budget: one Engine (one prompt bucket of 96 tokens, max_new_tokens 16) backs every in-process
server, so the greedy tests share one compiled program per batch size.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading

import jax
import numpy as np
import openai
import pytest
import requests

from gadjax.models.hf_io import load_decoder
from gadjax.models.tokenizer import load_tokenizer
from gadjax.rollout.sampler import Sampler
from gadjax.serving import ChatService, Engine, GenParams, make_server
from gadjax.teacher import TeacherClient, TeacherConfig
from tests.serving.serve_fixtures import KEY, post, user

PERSONA = "You are a pirate. Always talk like one."
NAME = "tiny-qwen2"


@pytest.fixture(scope="module")
def stack(model_dir):
    """(engine, tokenizer, model, plain base URL (key required), persona base URL (no key))."""
    tok = load_tokenizer(model_dir)
    model = load_decoder(model_dir)
    engine = Engine(
        model,
        eos_ids={tok.eos_token_id},
        pad_id=tok.pad_token_id,
        max_batch=8,
        batch_wait_ms=150,
        max_new_tokens=16,
        max_prompt_tokens=96,
        min_prompt_bucket=96,
        seed=0,
    )
    servers = [
        make_server(ChatService(engine, tok, NAME, api_key=KEY)),
        make_server(ChatService(engine, tok, NAME, system_prompt=PERSONA)),
    ]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers
    ]
    for t in threads:
        t.start()
    urls = [f"http://127.0.0.1:{s.server_address[1]}/v1" for s in servers]
    yield engine, tok, model, urls[0], urls[1]
    for s in servers:
        s.shutdown()
        s.server_close()
    engine.close()


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack[3], api_key=KEY, max_retries=0, timeout=60)


def reference(stack, messages, max_tokens: int = 16) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy response ids incl. a stop token) from the sampler run directly."""
    engine, tok, model = stack[:3]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    sampler = Sampler(model, engine.sampling_config(GenParams(0.0, 1.0, max_tokens)))
    out = sampler.generate(np.array([ids]), np.ones((1, len(ids)), np.int32), jax.random.key(0))
    return ids, [int(t) for t in out.response_ids[0, : out.response_lengths[0]]]


# ---------------------------------------------------------------- the openai client


def test_models_list_and_greedy_matches_sampler(stack, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    msgs = user("Hello there, who are you?")
    ids, ref = reference(stack, msgs)
    r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=16)
    tok = stack[1]
    eos = tok.eos_token_id
    stopped = bool(ref) and ref[-1] == eos
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == tok.decode(ref[:-1] if stopped else ref, skip_special_tokens=True)
    assert r.choices[0].finish_reason == ("stop" if stopped else "length")
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(ref)
    assert r.usage.total_tokens == len(ids) + len(ref)
    assert r.model == NAME and r.object == "chat.completion" and r.id.startswith("chatcmpl-")

    # max_completion_tokens cuts the same greedy answer; stop strings cut the text.
    short = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_completion_tokens=5)
    assert short.usage.completion_tokens == min(5, len(ref))
    if len(ref) > 5:
        assert short.choices[0].message.content == tok.decode(ref[:5], skip_special_tokens=True)
        assert short.choices[0].finish_reason == "length"
    full = r.choices[0].message.content
    assert len(full) > 6, full
    stop = full[4:6]
    cut = client.chat.completions.create(
        model=NAME, messages=msgs, temperature=0, max_tokens=16, stop=[stop, "\x00never"]
    )
    assert cut.choices[0].message.content == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"

    # stream=true: an SSE stream of chunks whose deltas concatenate to the same text.
    chunks = list(
        client.chat.completions.create(
            model=NAME,
            messages=msgs,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        r.choices[0].finish_reason
    ]
    assert chunks[-1].usage.completion_tokens == len(ref)


def test_sampling_n_and_seed_are_reproducible(client):
    kw = dict(model=NAME, messages=user("Tell me a story"), temperature=0.8, top_p=0.9, max_tokens=12, n=2)
    a = client.chat.completions.create(seed=1234, **kw)
    b = client.chat.completions.create(seed=1234, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert all(c.finish_reason in ("stop", "length") for c in a.choices)
    assert 1 <= a.usage.completion_tokens <= 24


def test_concurrent_requests_are_batched(stack, client):
    engine = stack[0]
    before = engine.stats()
    barrier = threading.Barrier(8)

    def ask(i: int):
        barrier.wait()
        return client.chat.completions.create(
            model=NAME, messages=user(f"Question {i}?"), temperature=0, max_tokens=16
        )

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    after = engine.stats()
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in results)
    requests_made = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests_made == 8
    assert batches < requests_made, (before, after)
    # Bounded programs: per sampling setting at most one per (prompt bucket, padded batch size).
    assert engine.batch_sizes() == [1, 2, 4, 8]
    assert after["compiled_programs"] <= after["samplers"] * len(engine.prompt_buckets) * 4
    # The stats route reports the same counters over HTTP.
    stats = requests.get(stack[3] + "/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert stats["batches"] >= after["batches"] and stats["requests"] >= after["requests"]


def test_hidden_system_prompt_is_prepended(stack, client):
    _, _, _, plain, persona = stack
    pc = openai.OpenAI(base_url=persona, api_key="unused", max_retries=0, timeout=60)
    kw = dict(model=NAME, temperature=0, max_tokens=16)
    hidden = pc.chat.completions.create(messages=user("Where is the treasure?"), **kw)
    explicit = client.chat.completions.create(
        messages=[{"role": "system", "content": PERSONA}, *user("Where is the treasure?")], **kw
    )
    bare = client.chat.completions.create(messages=user("Where is the treasure?"), **kw)
    assert hidden.choices[0].message.content == explicit.choices[0].message.content
    assert hidden.usage.prompt_tokens == explicit.usage.prompt_tokens > bare.usage.prompt_tokens
    # The client's own system message comes after the hidden one, in the same system message.
    both = pc.chat.completions.create(
        messages=[{"role": "system", "content": "Be brief."}, *user("Where is the treasure?")], **kw
    )
    merged_system = {"role": "system", "content": f"{PERSONA}\n\nBe brief."}
    merged = client.chat.completions.create(messages=[merged_system, *user("Where is the treasure?")], **kw)
    assert both.choices[0].message.content == merged.choices[0].message.content
    assert both.usage.prompt_tokens == merged.usage.prompt_tokens
    assert PERSONA not in json.dumps(hidden.model_dump())


def test_teacher_client_collects(stack, client, monkeypatch, tmp_path):
    monkeypatch.setenv("GADJAX_SERVE_TEST_KEY", KEY)
    cfg = TeacherConfig(
        base_url=stack[3],
        model=NAME,
        api_key_env="GADJAX_SERVE_TEST_KEY",
        temperature=0.0,
        max_tokens=16,
        concurrency=1,
        max_retries=0,
        cache_path=str(tmp_path / "c.sqlite"),
    )
    items = [(f"p{i}", user(f"Teach me fact {i}")) for i in range(4)]
    with TeacherClient(cfg) as tc:
        got = {pid: res[0] for pid, _, res in tc.prefetch(items, max_ahead=4)}
    for pid, msgs in items:
        ref = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=16)
        assert got[pid].text == ref.choices[0].message.content
        assert got[pid].finish_reason == ref.choices[0].finish_reason
        assert got[pid].usage["completion_tokens"] == ref.usage.completion_tokens


# ---------------------------------------------------------------- errors


def _error(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err
    return err


@pytest.mark.parametrize(
    "body, raw, needle",
    [
        (None, b"{not json", "not valid JSON"),
        (None, b"[1, 2]", "JSON object"),
        ({"model": NAME}, None, "'messages' is required"),
        ({"messages": []}, None, "non-empty"),
        ({"messages": "hi"}, None, "non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, None, "role='tool'"),
        ({"messages": [{"role": "user", "content": 5}]}, None, "content"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, None, "'temperature'"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, None, "out of range"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, None, "'n'=0"),
        ({"messages": [{"role": "user", "content": "x"}], "n": True}, None, "'n' must be an integer"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 17}, None, "exceeds"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, None, "'stop'"),
        ({"messages": [{"role": "user", "content": "x " * 200}]}, None, "limit of 96"),
    ],
)
def test_malformed_requests_get_400(stack, body, raw, needle):
    err = _error(post(stack[3], body, raw=raw), 400)
    assert needle in err["message"]
    assert err["type"] == "invalid_request_error"


def test_auth_and_routes(stack, client):
    plain = stack[3]
    _error(post(plain, {"messages": user("hi")}, key=None), 401)
    _error(post(plain, {"messages": user("hi")}, key="wrong"), 401)
    assert requests.get(plain + "/models", timeout=10).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=plain, api_key="wrong-key", max_retries=0).models.list()
    assert requests.get(plain.removesuffix("/v1") + "/health", timeout=10).json()["status"] == "ok"
    _error(requests.get(plain + "/nope", headers={"Authorization": f"Bearer {KEY}"}, timeout=10), 404)
    assert client.models.retrieve(NAME).id == NAME


def test_internal_error_is_500_and_server_keeps_serving(stack, client, monkeypatch):
    engine = stack[0]

    def boom(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(engine, "_run_group", boom)
    err = _error(post(stack[3], {"messages": user("hi"), "temperature": 0}), 500)
    assert "injected failure" in err["message"] and err["type"] == "server_error"
    monkeypatch.undo()
    r = client.chat.completions.create(model=NAME, messages=user("hi"), temperature=0, max_tokens=4)
    assert r.usage.completion_tokens >= 1
    assert engine.stats()["errors"] >= 1
