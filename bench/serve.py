"""gadjax.serve throughput: what request batching buys, and what HTTP + batching cost, one JSON line.

In one process, same model, same greedy requests (max_tokens R), each phase after an untimed warm-up
round that compiles its programs:

- ``direct``: the peer floor, the rollout Sampler called sequentially with one prompt at a time (no HTTP);
- ``serve_c1``: the server at concurrency 1 (one client thread): HTTP, JSON, tokenization and the
  batch-wait window on top of the same batch-1 program;
- ``serve_cK``: the server at concurrency K (K client threads): requests gathered into batches.

Reported: requests/s and completion tokens/s per phase, ratios serve_c1 / direct and serve_cK /
serve_c1, and the mean batch size the engine ran at concurrency K.

    .venv/bin/python bench/serve.py [--model PATH --tokenizer PATH] [--requests 32 --concurrency 8
        --max-tokens 32 --batch-wait-ms 5]
    .venv/bin/python bench/serve.py --mixed [--requests 64 --concurrency 16 --short-tokens 16
        --long-tokens 512 --long-every 4 --chunk-steps 8]
        short and long requests at once: main's static Engine vs the continuous one (bench/serve_mix.py)

Without --model, a random Llama (hidden 256, 4 layers, vocab 384) with the tiny ChatML tokenizer.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import jax
import numpy as np
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import serve_mix  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402
from gadjax.models.tokenizer import load_tokenizer  # noqa: E402
from gadjax.rollout import Sampler  # noqa: E402
from gadjax.serving import ChatService, Engine, GenParams, make_server  # noqa: E402


def random_model(out_dir: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,  # prompts <= 64 + 512 new tokens fit
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    tok_dir = os.path.join(REPO, "configs", "tiny_assets", "tokenizer")
    for f in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, f), out_dir)
    return out_dir


def questions(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Please explain topic number {i} briefly."}] for i in range(n)]


def run_http(url: str, msgs: list, max_tokens: int, concurrency: int) -> tuple[float, int]:
    local = threading.local()

    def ask(m: list) -> int:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        body = {"messages": m, "temperature": 0, "max_tokens": max_tokens}
        r = s.post(url + "/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        toks = sum(pool.map(ask, msgs))
    return time.perf_counter() - t0, toks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--tokenizer")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    serve_mix.add_arguments(ap)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    try:
        path = args.model or random_model(tmp)
        tok = load_tokenizer(args.tokenizer or path)
        model = load_decoder(path)
        if args.mixed:
            print(
                json.dumps({"model": args.model or "random-llama-256x4", **serve_mix.run(args, model, tok)})
            )
            return
        engine = Engine(
            model,
            eos_ids={tok.eos_token_id},
            pad_id=tok.pad_token_id,
            max_batch=args.concurrency,
            batch_wait_ms=args.batch_wait_ms,
            max_new_tokens=args.max_tokens,
            max_prompt_tokens=64,
            seed=0,
        )
        service = ChatService(engine, tok, "bench")
        httpd = make_server(service)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        msgs = questions(args.requests)

        # Peer: the sampler directly, one prompt at a time, the same config the server uses.
        sampler = Sampler(model, engine.sampling_config(GenParams(0.0, 1.0, args.max_tokens)))  # own programs
        ids = [service.prompt_ids(m) for m in msgs]

        def direct() -> tuple[float, int]:
            t0, toks = time.perf_counter(), 0
            for p in ids:
                out = sampler.generate(np.array([p]), np.ones((1, len(p)), np.int32), jax.random.key(0))
                toks += min(int(out.response_lengths[0]), args.max_tokens)
            return time.perf_counter() - t0, toks

        results = {}
        # Compile every batch size up front: batch composition under concurrency varies run to run.
        params = GenParams(0.0, 1.0, args.max_tokens)
        engine.warmup(params, prompt_tokens=max(len(p) for p in ids))
        ck = f"serve_c{args.concurrency}"
        phases = {
            "direct": direct,
            "serve_c1": lambda: run_http(url, msgs, args.max_tokens, 1),
            ck: lambda: run_http(url, msgs, args.max_tokens, args.concurrency),
        }
        for name, fn in phases.items():
            fn()  # warm-up round
            before = engine.stats()
            secs, toks = fn()
            after = engine.stats()
            batches = after["batches"] - before["batches"]
            results[name] = {
                "req_s": round(args.requests / secs, 2),
                "tok_s": round(toks / secs, 1),
                "seconds": round(secs, 3),
            }
            if name != "direct":
                rows = after["rows"] - before["rows"]
                results[name]["mean_batch_rows"] = round(rows / max(1, batches), 2)
                results[name]["compiled_in_run"] = after["compiled_programs"] - before["compiled_programs"]
        httpd.shutdown()
        httpd.server_close()
        engine.close()
        print(
            json.dumps(
                {
                    "bench": "serve",
                    "device": jax.devices()[0].device_kind,
                    "model": args.model or "random-llama-256x4",
                    "requests": args.requests,
                    "max_tokens": args.max_tokens,
                    "batch_wait_ms": args.batch_wait_ms,
                    **results,
                    "ratio_serve_c1_vs_direct": round(
                        results["serve_c1"]["req_s"] / results["direct"]["req_s"], 3
                    ),
                    f"ratio_{ck}_vs_serve_c1": round(results[ck]["req_s"] / results["serve_c1"]["req_s"], 3),
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
