"""Attention backends on this machine's CPU: xla (dense einsum) vs flash (blocked, custom VJP).

For each sequence length, one JSON line: best-of-N seconds of the forward and of forward + backward
(grads of q, k, v), and XLA's compiled temporary bytes (memory_analysis: the program's peak scratch,
where the dense path's [B, H, T, T] float32 scores live), for both backends, plus flash/xla ratios.
Batch 1, 4 query heads over 2 KV heads, head_dim 64, left padding on a quarter of the row, float32.
Only ratios from one run on a quiet machine mean anything.

    .venv/bin/python bench/attention.py [--seqs 1024,2048,4096 --repeats 3 --block 512]
    .venv/bin/python bench/attention.py --quick     # tiny shapes: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gadjax.models import attention as A  # noqa: E402
from gadjax.models import flash  # noqa: E402
from gadjax.models import layers as L  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def backends(block: int) -> dict:
    return {
        "xla": lambda q, k, v, valid: L.attention(q, k, v, A.causal_mask(valid)),
        "flash": lambda q, k, v, valid: flash.attention(q, k, v, valid, block=block),
    }


def measure(fn, args: tuple, repeats: int) -> dict:
    """Forward and forward+backward: seconds (best of `repeats`) and XLA's temporary bytes."""
    q, k, v, valid = args
    w = valid[:, :, None, None].astype(q.dtype)
    fwd = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, valid) * w), argnums=(0, 1, 2)))
    out = {}
    for name, prog, prog_args in (("fwd", fwd, args), ("fwdbwd", grad, (q, k, v))):
        compiled = prog.lower(*prog_args).compile()
        jax.block_until_ready(compiled(*prog_args))  # warm-up
        out[f"{name}_s"] = round(best_of(lambda c=compiled, a=prog_args: c(*a), repeats), 4)
        out[f"{name}_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=flash.DEFAULT_BLOCK)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: checks that it runs")
    args = ap.parse_args()
    seqs = [128, 256] if args.quick else [int(s) for s in args.seqs.split(",")]
    block = 64 if args.quick else args.block
    repeats = 1 if args.quick else args.repeats
    rng = np.random.default_rng(0)
    for t in seqs:
        h, kv, d = args.heads, args.kv_heads, args.head_dim
        q = jnp.asarray(rng.normal(size=(1, t, h, d)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(1, t, kv, d)), jnp.float32)
        v = jnp.asarray(rng.normal(size=(1, t, kv, d)), jnp.float32)
        valid = jnp.arange(t)[None, :] >= t // 4  # left padding
        row = {"bench": "attention", "seq": t, "heads": h, "kv_heads": kv, "head_dim": d, "block": block}
        res = {name: measure(fn, (q, k, v, valid), repeats) for name, fn in backends(block).items()}
        for name, r in res.items():
            row.update({f"{name}_{key}": val for key, val in r.items()})
        for key in ("fwd_s", "fwdbwd_s", "fwd_temp_bytes", "fwdbwd_temp_bytes"):
            row[f"flash_over_xla_{key}"] = round(res["flash"][key] / max(res["xla"][key], 1e-12), 3)
        row["cpu_count"] = os.cpu_count()
        row["load_avg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
