"""Teacher client throughput: requests/s through TeacherClient against a local server that answers
instantly, at concurrency 1, 8 and 64, compared with the peer in the same run: a bare
``requests.Session`` loop (one thread, same server, same JSON body, body parsed).

    .venv/bin/python bench/teacher.py [--n 600] [--repeats 3]

Prints one JSON line. The server (tests/teacher/fake_server.py, a ThreadingHTTPServer) runs in its own
process; on a small machine it shares the cores with the client, so the absolute numbers mostly measure
this host; the ratios say what the client's machinery (pool, rate limiter, retries, cache) costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gadjax.teacher import TeacherClient, TeacherConfig  # noqa: E402


def items(n: int, tag: str) -> list[tuple[str, list[dict[str, str]]]]:
    return [(f"{tag}{i}", [{"role": "user", "content": f"{tag} prompt {i}"}]) for i in range(n)]


def raw_loop(base_url: str, n: int) -> float:
    s = requests.Session()
    t0 = time.perf_counter()
    for i in range(n):
        body = {"model": "fake", "messages": [{"role": "user", "content": f"raw prompt {i}"}],
                "temperature": 1.0, "top_p": 1.0, "max_tokens": 1024}
        r = s.post(base_url + "/chat/completions", json=body, timeout=30)
        r.raise_for_status()
        r.json()["choices"][0]["message"]["content"]
    dt = time.perf_counter() - t0
    s.close()
    return n / dt


def client_rate(base_url: str, n: int, concurrency: int, cache_path: str | None = None, tag: str = "c"
                ) -> float:
    cfg = TeacherConfig(base_url=base_url, model="fake", api_key_env=None, concurrency=concurrency,
                        cache_path=cache_path, timeout_s=30.0)
    with TeacherClient(cfg) as c:
        list(c.prefetch(items(8, "warm" + tag), max_ahead=8))  # sessions / connections up
        t0 = time.perf_counter()
        for _ in c.prefetch(items(n, tag), max_ahead=2 * concurrency):
            pass
        dt = time.perf_counter() - t0
        assert c.counters["failures"] == 0
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600, help="requests per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many interleaved rounds")
    args = ap.parse_args()
    srv = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "teacher", "fake_server.py")],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1"
        raw_loop(url, 20)  # warm-up
        # Interleave the measurements and keep each one's best of --repeats: a shared 2-core host is noisy.
        best: dict[str, float] = {}

        def keep(name: str, rps: float) -> None:
            best[name] = max(best.get(name, 0.0), rps)

        for rep in range(args.repeats):
            keep("raw", raw_loop(url, args.n))
            for c in (1, 8, 64):
                keep(f"c{c}", client_rate(url, args.n, c, tag=f"r{rep}c{c}-"))
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "cache.sqlite")
                keep("cache_write", client_rate(url, args.n, 8, cache_path=path, tag=f"r{rep}cache-"))
                keep("cache_hit", client_rate(url, args.n, 8, cache_path=path, tag=f"r{rep}cache-"))
        raw = best["raw"]
        out: dict[str, object] = {"bench": "teacher", "n": args.n, "repeats": args.repeats,
                                  "cpus": os.cpu_count(), "raw_session_rps": round(raw, 1)}
        for c in (1, 8, 64):
            out[f"client_rps_c{c}"] = round(best[f"c{c}"], 1)
            out[f"ratio_c{c}_vs_raw"] = round(best[f"c{c}"] / raw, 3)
        out["client_cache_write_rps_c8"] = round(best["cache_write"], 1)
        out["client_cache_hit_rps_c8"] = round(best["cache_hit"], 1)
        out["ratio_cache_write_vs_no_cache_c8"] = round(best["cache_write"] / best["c8"], 3)
        print(json.dumps(out), flush=True)
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
