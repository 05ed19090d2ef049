"""Rollout throughput: gadjax's jitted KV-cache sampler vs transformers `generate` (PyTorch), one JSON line.

Same random weights (a HF Llama built by torch, saved, loaded by gadjax), float32, sampling at
temperature 0.8 (top-p 1, no top-k), B prompts x P tokens, exactly R new tokens (no stop id for gadjax;
min_new_tokens = R for transformers), for the SmolLM2-135M shape and a tiny shape, in one process.

Also measured in the same run: the weight-read floor, a jitted [B, h] x [h, params / h] float32 matmul
(reads as many weight bytes as one decode step must), and the fraction of that floor a decode step
reaches (floor_ms / gadjax_ms_per_token_step).

    .venv/bin/python bench/sampler.py [--batch 16 --prompt 64 --new 64 --repeats 3 --shapes smollm2,tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.shapes import SMOLLM2, TINY, llama_kwargs  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402
from gadjax.rollout import Sampler, SamplingConfig  # noqa: E402

SHAPES = {"smollm2": llama_kwargs(SMOLLM2), "tiny": llama_kwargs(TINY)}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def weight_read_floor_ms(n_params: int, batch: int, hidden: int, repeats: int = 10) -> float:
    """Median time of a jitted [batch, hidden] x [hidden, n_params/hidden] float32 matmul."""
    cols = -(-n_params // hidden)
    w = jax.random.normal(jax.random.key(0), (hidden, cols), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (batch, hidden), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    f(x, w).block_until_ready()
    return 1e3 * _median_time(lambda: f(x, w).block_until_ready(), repeats)


def bench_shape(name: str, args: argparse.Namespace, workdir: str) -> dict:
    cfg_dict = SHAPES[name]
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**cfg_dict)).eval()
    path = os.path.join(workdir, name)
    hf.save_pretrained(path)
    model = load_decoder(path)
    n_params = model.config.param_count()

    b, p, r = args.batch, args.prompt, args.new
    rng = np.random.RandomState(0)
    ids = rng.randint(1, cfg_dict["vocab_size"], (b, p)).astype(np.int32)
    mask = np.ones((b, p), np.int32)

    sampler = Sampler(model, SamplingConfig(max_new_tokens=r, temperature=0.8, prompt_buckets=(p,)))
    keys = iter(jax.random.split(jax.random.key(0), args.repeats + 1))
    t0 = time.perf_counter()
    out = sampler.generate(ids, mask, next(keys))
    compile_and_first_s = time.perf_counter() - t0
    assert int(out.response_lengths.min()) == r, "gadjax stopped early"
    ours_s = _median_time(lambda: sampler.generate(ids, mask, next(keys)), args.repeats)

    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def hf_generate(new: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                input_ids=t_ids,
                attention_mask=t_mask,
                do_sample=True,
                temperature=0.8,
                top_p=1.0,
                top_k=0,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
            )

    hf_generate(2)  # warm-up
    hf_out = hf_generate(r)
    assert hf_out.shape[1] == p + r, "transformers stopped early"
    hf_s = _median_time(lambda: hf_generate(r), args.hf_repeats)

    new_tokens = b * r
    floor_ms = weight_read_floor_ms(n_params, b, cfg_dict["hidden_size"])
    ours_step_ms = 1e3 * ours_s / r
    return {
        "params": n_params,
        "gadjax_tokens_per_s": round(new_tokens / ours_s, 1),
        "transformers_tokens_per_s": round(new_tokens / hf_s, 1),
        "ratio": round(hf_s / ours_s, 2),
        "gadjax_ms_per_step": round(ours_step_ms, 2),
        "transformers_ms_per_step": round(1e3 * hf_s / r, 2),
        "weight_read_floor_ms": round(floor_ms, 2),
        "fraction_of_floor": round(floor_ms / ours_step_ms, 3),
        "gadjax_compile_and_first_call_s": round(compile_and_first_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-repeats", type=int, default=1)
    ap.add_argument("--shapes", default="smollm2,tiny")
    args = ap.parse_args()
    result = {
        "bench": "sampler",
        "device": str(jax.devices()[0].platform),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "prompt_len": args.prompt,
        "new_tokens": args.new,
        "temperature": 0.8,
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.shapes.split(","):
            result[name] = bench_shape(name, args, workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
