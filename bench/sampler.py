"""Rollout throughput: gadjax's jitted KV-cache sampler vs transformers `generate` (PyTorch), one JSON line.

Same random weights (a HF Llama built by torch, saved, loaded by gadjax), float32, sampling at
temperature 0.8 (top-p 1, no top-k), B prompts x P tokens, exactly R new tokens (no stop id for gadjax;
min_new_tokens = R for transformers), for the SmolLM2-135M shape and a tiny shape, in one process.

Reported two ways, for both sides alike: end to end (prefill + R decode steps, new tokens/s and
"ratio") and one decode step alone ((time for R tokens - time for 2 tokens) / (R - 2), "decode_ratio").
The prefill of B x P prompt tokens is compute-bound and costs both sides about the same, so it caps
the end-to-end ratio.

Also measured in the same run: the weight-read floor, a jitted [B, h] x [h, params / h] float32 matmul
(reads as many weight bytes as one decode step must), the fraction of that floor a decode step
reaches (floor_ms / gadjax_decode_ms_per_step), and a plain jitted sum over the same bytes (when it is
much faster than the matmul, a decode step is bound by arithmetic, not by reading the weights).

    .venv/bin/python bench/sampler.py [--batch 16 --prompt 64 --new 64 --repeats 3 --shapes smollm2,tiny]
                                      [--compare-scan]
    .venv/bin/python bench/sampler.py --long-tail [--batch 16 --samples 4 --slots 0 --repeats 1]
        continuous batching vs the static rollout vs transformers on SmolLM2-135M with response lengths
        from the CPU length profile (bench/long_tail.py; JSON with ratio_vs_static and ratio_vs_hf)
"""

from __future__ import annotations

import argparse
import functools
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

from bench import long_tail  # noqa: E402
from bench.shapes import SMOLLM2, TINY, llama_kwargs  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402
from gadjax.rollout import Sampler, SamplingConfig  # noqa: E402
from gadjax.rollout.sampler import resolve_layer_loop  # noqa: E402

SHAPES = {"smollm2": llama_kwargs(SMOLLM2), "tiny": llama_kwargs(TINY)}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def weight_read_floor_ms(n_params: int, batch: int, hidden: int, repeats: int = 10) -> dict[str, float]:
    """The issue's floor: a jitted [batch, hidden] x [hidden, n_params/hidden] float32 matmul (reads as
    many weight bytes as one decode step must), and, for context, a plain jitted sum over the same
    bytes (the memory-bandwidth time alone: where the matmul takes longer, the step is compute-bound)."""
    cols = -(-n_params // hidden)
    w = jax.random.normal(jax.random.key(0), (hidden, cols), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (batch, hidden), jnp.float32)
    matmul, read = jax.jit(lambda x, w: x @ w), jax.jit(jnp.sum)
    matmul(x, w).block_until_ready()
    read(w).block_until_ready()
    return {
        "matmul_ms": 1e3 * _median_time(lambda: matmul(x, w).block_until_ready(), repeats),
        "read_ms": 1e3 * _median_time(lambda: read(w).block_until_ready(), repeats),
    }


def _gadjax_times(model, ids, mask, new: int, repeats: int, layer_loop: str) -> dict[str, float]:
    """Seconds for rollouts of `new` and of 2 tokens (difference / (new - 2) = one decode step)."""
    keys = iter(jax.random.split(jax.random.key(0), 2 * repeats + 2))
    out = {}
    for r in (new, 2):
        cfg = SamplingConfig(
            max_new_tokens=r, temperature=0.8, prompt_buckets=(ids.shape[1],), layer_loop=layer_loop
        )
        generate = functools.partial(Sampler(model, cfg).generate, ids, mask)
        t0 = time.perf_counter()
        first = generate(next(keys))
        out[f"compile_and_first_s_{r}"] = time.perf_counter() - t0
        assert int(first.response_lengths.min()) == r, "gadjax stopped early"
        out[r] = _median_time(lambda g=generate: g(next(keys)), repeats)
    return out


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

    ours = _gadjax_times(model, ids, mask, r, args.repeats, "auto")
    scan = _gadjax_times(model, ids, mask, r, args.repeats, "scan") if args.compare_scan else None

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
    assert hf_generate(r).shape[1] == p + r, "transformers stopped early"
    hf_s = {n: _median_time(lambda n=n: hf_generate(n), args.hf_repeats) for n in (r, 2)}

    def decode_ms(times: dict) -> float:
        return 1e3 * (times[r] - times[2]) / (r - 2)

    new_tokens = b * r
    floor = weight_read_floor_ms(n_params, b, cfg_dict["hidden_size"])
    ours_decode, hf_decode = decode_ms(ours), decode_ms(hf_s)
    result = {
        "params": n_params,
        "layer_loop": resolve_layer_loop("auto", None),
        # End to end: prefill of the B x P prompts + R decode steps, as a user sees a rollout.
        "gadjax_tokens_per_s": round(new_tokens / ours[r], 1),
        "transformers_tokens_per_s": round(new_tokens / hf_s[r], 1),
        "ratio": round(hf_s[r] / ours[r], 2),
        "gadjax_ms_per_step": round(1e3 * ours[r] / r, 2),
        "transformers_ms_per_step": round(1e3 * hf_s[r] / r, 2),
        # One decode step alone: (time for R tokens - time for 2 tokens) / (R - 2), both sides alike.
        "gadjax_decode_ms_per_step": round(ours_decode, 2),
        "transformers_decode_ms_per_step": round(hf_decode, 2),
        "decode_ratio": round(hf_decode / ours_decode, 2),
        "gadjax_two_token_rollout_s": round(ours[2], 3),
        "transformers_two_token_rollout_s": round(hf_s[2], 3),
        "weight_read_floor_ms": round(floor["matmul_ms"], 2),
        "fraction_of_floor": round(floor["matmul_ms"] / ours_decode, 3),
        "weight_bytes_sum_ms": round(floor["read_ms"], 2),
        "gadjax_compile_and_first_call_s": round(ours[f"compile_and_first_s_{r}"], 1),
    }
    if scan is not None:
        result["gadjax_scan_decode_ms_per_step"] = round(decode_ms(scan), 2)
        result["gadjax_scan_ms_per_step"] = round(1e3 * scan[r] / r, 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-repeats", type=int, default=1)
    ap.add_argument("--shapes", default="smollm2,tiny")
    ap.add_argument("--compare-scan", action="store_true", help="also time layer_loop='scan' (scanned model)")
    ap.add_argument(
        "--long-tail",
        action="store_true",
        help="continuous vs static vs transformers on SmolLM2 with profile lengths (bench/long_tail.py)",
    )
    long_tail.add_arguments(ap)
    args = ap.parse_args()
    if args.long_tail:
        print(json.dumps(long_tail.run(args)))
        return
    result = {
        "bench": "sampler",
        "device": str(jax.devices()[0].platform),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "prompt_len": args.prompt,
        "new_tokens": args.new,
        "temperature": 0.8,
        # Host allocator setting both peers ran under (README: huge pages make fresh buffers cheaper).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.shapes.split(","):
            result[name] = bench_shape(name, args, workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
