"""gadjax.serve's continuous-batching engine (gadjax.serving.continuous): requests join and leave the
running slots. Over real HTTP, mixed-length concurrent requests get the text that one-at-a-time requests
with the same seed get; a short request does not wait for a long one; n choices and max_tokens caps."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading

import pytest
import requests

from gadjax.models.hf_io import load_decoder
from gadjax.models.tokenizer import load_tokenizer
from gadjax.serving import ChatService, GenParams, make_server
from gadjax.serving.continuous import ContinuousEngine
from tests.serving.serve_fixtures import user

MAX_NEW = 48


@pytest.fixture(scope="module")
def served(model_dir):
    tok = load_tokenizer(model_dir)
    engine = ContinuousEngine(
        load_decoder(model_dir),
        eos_ids={tok.eos_token_id},
        pad_id=tok.pad_token_id,
        max_batch=4,
        max_new_tokens=MAX_NEW,
        max_prompt_tokens=64,
        min_prompt_bucket=64,
        chunk_steps=4,
        seed=0,
    )
    server = make_server(ChatService(engine, tok, "tiny"))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield engine, tok, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    engine.close()


def _ask(url: str, i: int, max_tokens: int) -> dict:
    body = {
        "messages": user(f"question {i}: tell me something about the number {i * 7}"),
        "temperature": 0.9 if i % 3 else 0.0,  # greedy and sampled requests share the slots
        "top_p": 0.9 if i % 2 else 1.0,
        "seed": 100 + i,
        "max_tokens": max_tokens,
        "n": 2 if i == 4 else 1,
    }
    r = requests.post(url + "/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    out = r.json()
    return {"texts": [c["message"]["content"] for c in out["choices"]], "usage": out["usage"]}


def test_concurrent_mixed_lengths_give_the_one_at_a_time_text(served):
    engine, _, url = served
    caps = [3, MAX_NEW, 8, 30, 5, MAX_NEW, 12, 1, 20, 40]  # more requests than the 4 slots
    alone = [_ask(url, i, cap) for i, cap in enumerate(caps)]
    before = engine.stats()
    with cf.ThreadPoolExecutor(len(caps)) as pool:
        together = list(pool.map(lambda ic: _ask(url, *ic), enumerate(caps)))
    assert together == alone
    lengths = sorted(o["usage"]["completion_tokens"] for o in alone)
    assert lengths[0] <= 3 and lengths[-1] >= 30, lengths  # rows of very different lengths
    for out, cap in zip(alone, caps, strict=True):
        assert out["usage"]["completion_tokens"] <= cap * len(out["texts"])
    after = engine.stats()
    assert after["batches"] > before["batches"] and after["errors"] == 0
    assert after["busy_slot_steps"] - before["busy_slot_steps"] > 4 * 4  # slots were shared, not one row


def test_short_request_does_not_wait_for_a_long_one(served):
    engine, tok, _ = served
    prompt = tok.encode("a long story please", add_special_tokens=False)
    long = engine.submit(prompt, GenParams(temperature=0.9, max_tokens=MAX_NEW, seed=7))
    short = engine.submit(prompt, GenParams(temperature=0.9, max_tokens=2, seed=8))
    got = short.result(timeout=120)
    long_done_then = long.done()
    final = long.result(timeout=120)
    assert got[0].num_tokens <= 2
    assert final[0].num_tokens > 2 + 2 * engine.chunk_steps, final  # the long one really is long
    assert not long_done_then, "the short request waited for the long one"


def _sse_events(resp: requests.Response) -> list[dict]:
    """The JSON events of a server-sent-event response, read line by line as they arrive."""
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


def test_engine_reports_tokens_as_they_are_produced(served):
    """on_tokens is called after each decode chunk, before the request resolves, and the reported
    tokens are the choice's tokens (its stop token included)."""
    engine, tok, _ = served
    prompt = tok.encode("a long story please", add_special_tokens=False)
    calls: list[tuple[int, list[int], bool]] = []
    fut_box: list = []
    fut = engine.submit(
        prompt,
        GenParams(temperature=0.9, max_tokens=MAX_NEW, seed=7),  # the long answer of the test above
        n=1,
        on_tokens=lambda j, toks: calls.append((j, toks, fut_box[0].done() if fut_box else False)),
    )
    fut_box.append(fut)
    (gen,) = fut.result(timeout=120)
    assert gen.num_tokens > 2 + 2 * engine.chunk_steps
    assert len(calls) >= gen.num_tokens // engine.chunk_steps  # one call per decode chunk, not one at the end
    assert not any(done for _, _, done in calls)
    reported = [t for _, toks, _ in calls for t in toks]
    assert reported[: len(gen.token_ids)] == gen.token_ids and len(reported) == gen.num_tokens


def test_streaming_sends_token_chunks_that_make_the_non_streaming_text(served):
    """stream=true over real HTTP: several content chunks per choice, arriving as the engine decodes,
    whose concatenation is the text (and finish_reason, usage) of the same request without streaming."""
    _, _, url = served
    body = {
        "messages": user("a long story please"),
        "temperature": 0.9,
        "seed": 7,
        "max_tokens": MAX_NEW,
        "n": 2,
    }
    plain = requests.post(url + "/chat/completions", json=body, timeout=120).json()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with requests.post(url + "/chat/completions", json=stream_body, timeout=120, stream=True) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Transfer-Encoding"] == "chunked"
        events = _sse_events(r)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    for choice in plain["choices"]:
        mine = [c for e in events for c in e["choices"] if c["index"] == choice["index"]]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        contents = [c["delta"]["content"] for c in mine if c["delta"].get("content")]
        assert "".join(contents) == choice["message"]["content"]
        if choice["finish_reason"] == "length":  # 48 tokens: 12 decode chunks
            assert len(contents) >= 3, contents  # token chunks, not the whole answer at once
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == [choice["finish_reason"]]
    # seed 7: one choice runs to max_tokens, the other ends at a stop token after 8
    assert sorted(c["finish_reason"] for c in plain["choices"]) == ["length", "stop"]
    assert events[-1]["usage"] == plain["usage"]
    # the connection is reusable after a chunked stream (keep-alive), and errors stay plain JSON
    with requests.Session() as s:
        for _ in range(2):
            with s.post(url + "/chat/completions", json={**stream_body, "max_tokens": 4}, stream=True) as r:
                assert _sse_events(r)[-1]["usage"]["completion_tokens"] <= 8
        bad = s.post(url + "/chat/completions", json={**stream_body, "max_tokens": MAX_NEW + 1})
        assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]
