"""LoRA rollout: adapters merged into the weights once per rollout vs applied unmerged at every decode step.

One process, one device, float32, SmolLM2-135M shape with random weights, rank-16 adapters on every
projection (B random so the adapters matter). Times one `Sampler.generate` of B prompts x P tokens and
exactly R new tokens (no stop id), after a compile run, in three ways:

  merged_unrolled  merge (jitted, new copies of the adapted weights) + the plain model's rollout with the
                   per-layer fused decode weights (layer_loop "auto" on one CPU device): what the trainer does
  merged_scan      merge + the plain model's rollout with the scanned layers
  unmerged_scan    the LoRA model's rollout (x W + (x A) B in every layer, every step), scanned layers

Prints one JSON line with the times and the ratios to merged_unrolled.

    .venv/bin/python bench/lora_rollout.py [--batch 8 --prompt 32 --new 32 --rank 16 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.shapes import SMOLLM2  # noqa: E402
from gadjax.models import lora  # noqa: E402
from gadjax.models.config import ModelConfig  # noqa: E402
from gadjax.models.decoder import Decoder  # noqa: E402
from gadjax.rollout import Sampler, SamplingConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = ModelConfig.from_hf_dict(dict(SMOLLM2, num_hidden_layers=30), source="bench")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    plain_graphdef, _ = nnx.split(model, nnx.Param)
    lcfg = lora.LoraConfig(args.rank, 2.0 * args.rank, tuple(lora.TARGETS))
    lora.attach(model.blocks, lcfg, jax.random.key(1))
    for i, name in enumerate(lcfg.targets):
        var = getattr(model.blocks, f"{name}_lora_b")
        var[...] = 0.01 * jax.random.normal(jax.random.key(i), var.shape)
    lora_graphdef, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    merge = jax.jit(lambda a, b: lora.merged_weights(a, b, lcfg.scale))

    rng = np.random.RandomState(0)
    ids = rng.randint(3, cfg.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    key = jax.random.key(0)

    def sampling(loop: str) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=args.new, temperature=0.8, prompt_buckets=(args.prompt,), layer_loop=loop
        )

    def merged(loop: str):
        sampler = Sampler((plain_graphdef, base), sampling(loop))

        def run():
            weights = lora.replace_weights(base, merge(adapters, base))
            out = sampler.generate(ids, mask, key, state=weights)
            return out.response_ids

        return run

    def unmerged():
        full = nnx.merge_state(adapters, base)
        sampler = Sampler((lora_graphdef, full), sampling("scan"))
        return lambda: sampler.generate(ids, mask, key, state=full).response_ids

    runs = {"merged_unrolled": merged("unrolled"), "merged_scan": merged("scan"), "unmerged_scan": unmerged()}
    times = {}
    for name, fn in runs.items():
        fn()  # compile
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        times[name] = float(np.median(ts))
    ref = times["merged_unrolled"]
    print(
        json.dumps(
            {
                "bench": "lora_rollout",
                "shape": "smollm2-135m",
                "rank": args.rank,
                "batch": args.batch,
                "prompt": args.prompt,
                "new_tokens": args.new,
                "seconds": times,
                "ratio_to_merged_unrolled": {k: v / ref for k, v in times.items()},
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
