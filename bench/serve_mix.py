"""`bench/serve.py --mixed`: short and long requests at once, the static Engine vs the continuous one.

One process, one model, the same HTTP front (ChatService) for both engines: --requests requests, one in
--long-every asking for --long-tokens (512) tokens and the others for --short-tokens (16), sent by
--concurrency (16) client threads in that interleaved order, greedy. No stop id ends a request early
(the engines get an eos id outside the vocabulary, bench-only), so every request produces exactly its
max_tokens and both engines do the same useful work. Each engine first answers one untimed round of the
same requests (compiles its programs), then the timed round.

Reported per engine: median and p90 latency of the short requests and of the long ones, completion
tokens/s over the round; and ratios continuous vs static (short median latency: static / continuous,
higher is better; throughput: continuous / static). The static Engine is main's request batching:
a batch runs until its longest member ends, and requests arriving meanwhile wait for it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import threading
import time

import numpy as np
import requests

from gadjax.serving import ChatService, ContinuousEngine, Engine, make_server


def _round(url: str, caps: list[int], concurrency: int) -> tuple[float, list[float], int]:
    """Send every request (cap = max_tokens); (seconds, per-request latency, completion tokens)."""
    local = threading.local()

    def ask(i_cap: tuple[int, int]) -> tuple[float, int]:
        i, cap = i_cap
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        body = {
            "messages": [{"role": "user", "content": f"Please explain topic number {i} in detail."}],
            "temperature": 0,
            "max_tokens": cap,
        }
        t0 = time.perf_counter()
        r = s.post(url + "/chat/completions", json=body, timeout=1200)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(ask, enumerate(caps)))
    return time.perf_counter() - t0, [o[0] for o in out], sum(o[1] for o in out)


def run(args: argparse.Namespace, model, tok) -> dict:
    caps = [args.long_tokens if i % args.long_every == 0 else args.short_tokens for i in range(args.requests)]
    short = np.asarray(caps) == args.short_tokens
    common = dict(
        eos_ids={2**30},  # outside any vocabulary, never sampled: every request runs to its max_tokens
        pad_id=tok.pad_token_id,
        max_batch=args.concurrency,
        max_new_tokens=args.long_tokens,
        max_prompt_tokens=64,
        seed=0,
    )
    engines = {
        "static": lambda: Engine(model, batch_wait_ms=args.batch_wait_ms, **common),
        "continuous": lambda: ContinuousEngine(model, chunk_steps=args.chunk_steps, **common),
    }
    results = {}
    for name, make in engines.items():
        engine = make()
        httpd = make_server(ChatService(engine, tok, "bench"))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        _round(url, caps, args.concurrency)  # compile / warm up
        secs, lat, toks = _round(url, caps, args.concurrency)
        lat = np.asarray(lat)
        assert toks == sum(caps), f"{name}: {toks} completion tokens, expected {sum(caps)}"
        results[name] = {
            "seconds": round(secs, 3),
            "tok_s": round(toks / secs, 1),
            "short_median_s": round(float(np.median(lat[short])), 3),
            "short_p90_s": round(float(np.percentile(lat[short], 90)), 3),
            "long_median_s": round(float(np.median(lat[~short])), 3),
            "stats": engine.stats(),
        }
        httpd.shutdown()
        httpd.server_close()
        engine.close()
    s, c = results["static"], results["continuous"]
    return {
        "bench": "serve_mixed",
        "requests": args.requests,
        "short_tokens": args.short_tokens,
        "long_tokens": args.long_tokens,
        "long_every": args.long_every,
        "concurrency": args.concurrency,
        "chunk_steps": args.chunk_steps,
        **results,
        "short_latency_ratio": round(s["short_median_s"] / c["short_median_s"], 2),
        "throughput_ratio": round(c["tok_s"] / s["tok_s"], 2),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--mixed", action="store_true", help="short + long requests, static vs continuous engine")
    ap.add_argument("--short-tokens", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=512)
    ap.add_argument("--long-every", type=int, default=4, help="one request in this many is long")
    ap.add_argument("--chunk-steps", type=int, default=8)
