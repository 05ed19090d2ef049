"""Forward throughput: gadjax (jitted nnx decoder) vs transformers (PyTorch eager), one JSON line.

Same random weights (a HF Llama with the SmolLM2-135M shape built by torch, saved, loaded by gadjax),
float32, batch 8 x 256 tokens, full logits, on this machine's CPU, in one process.

    .venv/bin/python bench/forward.py [--batch 8 --seq 256 --repeats 3]
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

from bench.shapes import SMOLLM2, llama_kwargs  # noqa: E402
from gadjax.models.decoder import positions_from_mask  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**llama_kwargs(SMOLLM2))).eval()
    ids = np.random.RandomState(0).randint(0, SMOLLM2["vocab_size"], (args.batch, args.seq))
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        model = load_decoder(d)

    @jax.jit
    def fwd(state, ids, mask):
        from flax import nnx

        m = nnx.merge(graphdef, state)
        hidden, _ = m(ids, positions_from_mask(mask), mask)
        return m.logits(hidden)

    from flax import nnx

    graphdef, state = nnx.split(model)
    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    t0 = time.perf_counter()
    fwd(state, jids, jmask).block_until_ready()
    compile_s = time.perf_counter() - t0
    ours = best_of(lambda: fwd(state, jids, jmask).block_until_ready(), args.repeats)

    tids, tmask = torch.tensor(ids), torch.tensor(mask)

    def torch_fwd():
        with torch.no_grad():
            return ref(input_ids=tids, attention_mask=tmask).logits

    torch_fwd()  # warm-up
    theirs = best_of(torch_fwd, args.repeats)
    tokens = args.batch * args.seq
    print(
        json.dumps(
            {
                "bench": "forward",
                "shape": "smollm2-135m",
                "batch": args.batch,
                "seq": args.seq,
                "dtype": "float32",
                "device": jax.devices()[0].device_kind,
                "gadjax_tokens_per_s": round(tokens / ours, 1),
                "transformers_tokens_per_s": round(tokens / theirs, 1),
                "ratio_gadjax_vs_transformers": round(theirs / ours, 3),
                "gadjax_compile_s": round(compile_s, 2),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
