"""Packed vs padded score and train passes (train.packing): the reference pass, the D step and the G step.

Model: SmolLM2-135M's shape (bench.shapes.SMOLLM2: llama, 30 layers, hidden 576, vocab 49152), random
init (speed does not depend on the weights), float32, remat "full" (as configs/v5p.py), one CPU device.

Workload: ``--prompts`` prompts x ``--samples`` rollouts each, lengths drawn from the CPU length profile
(gadjax.data.lengths.CPU: the paper's mix at caps 512 prompt / 384 response tokens, same shape of
distribution: prompts ~17 tokens on average, responses ~83, log-normal tails). The padded layout is the
trainer's: each prompt LEFT-padded to the power-of-two bucket of the longest prompt of a full 256-prompt
step drawn from the same profile (at 256 prompts the tail reaches the cap: 512), each response RIGHT-
padded to the 384-token cap (the rollout's output is cap-wide). The packed layout
(gadjax.data.packing) lays the same rows in ``--pack-rows`` sequences of 896 tokens per micro-batch.

Programs (the trainer's, gadjax.algo.steps vs gadjax.algo.packed): ``ref`` the reference log-probs of
the G rows (forward), ``d_step`` the discriminator step on teacher + student rows, ``g_step`` the GRPO
policy step. For each: wall seconds per call (best of ``--steps`` after a compile + warm-up call), tokens
processed (rows x width computed) and real tokens; ``ratio`` = padded seconds / packed seconds.
Prints one JSON line, with this machine's load average (only ratios from a quiet machine mean much).

Usage: .venv/bin/python bench/packing.py [--prompts 2] [--samples 4] [--steps 1] [--pack-rows 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.shapes import SMOLLM2  # noqa: E402

STEP_PROMPTS = 256  # the paper's prompts per step: decides the padded prompt bucket


def workload(prompts: int, samples: int, seed: int):
    """Padded numpy arrays (prompt / teacher / student rows) with lengths from the CPU profile."""
    import numpy as np

    from gadjax.data.lengths import CPU

    rng = np.random.default_rng(seed)
    v = SMOLLM2["vocab_size"]
    step_prompts = CPU.sample_prompts(rng, STEP_PROMPTS)
    width = min(CPU.prompt_cap, 1 << int(np.ceil(np.log2(step_prompts.max()))))
    p_len = step_prompts[:prompts]
    t_len, s_len = CPU.sample_responses(rng, prompts), CPU.sample_responses(rng, prompts * samples)

    def padded(lens, w, left):
        ids = rng.integers(3, v, (lens.size, w), dtype=np.int32)
        cols = np.arange(w)[None]
        mask = (cols >= w - lens[:, None]) if left else (cols < lens[:, None])
        return ids * mask, mask.astype(np.int32)

    p, pm = padded(p_len, width, left=True)
    t, tm = padded(t_len, CPU.response_cap, left=False)
    s, sm = padded(s_len, CPU.response_cap, left=False)
    return dict(
        prompt_ids=p, prompt_mask=pm, response_ids=t, response_mask=tm, student_ids=s, student_mask=sm
    )


def best_time(fn, steps: int) -> float:
    fn()  # compile + warm up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--pack-rows", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--programs", default="ref,d_step,g_step")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    from flax import nnx

    from gadjax.algo import packed as PK
    from gadjax.algo.optim import make_optimizer
    from gadjax.algo.steps import (
        PolicyLossConfig,
        TrainState,
        make_discriminator_step,
        make_logprob_fn,
        make_policy_step,
    )
    from gadjax.data import packing
    from gadjax.data.lengths import CPU
    from gadjax.models.config import ModelConfig
    from gadjax.models.decoder import Decoder
    from gadjax.models.discriminator import Discriminator

    n = args.samples
    w = workload(args.prompts, n, args.seed)
    rep = lambda x: np.repeat(x, n, axis=0)  # noqa: E731
    g_rows = dict(
        prompt_ids=rep(w["prompt_ids"]),
        prompt_mask=rep(w["prompt_mask"]),
        response_ids=w["student_ids"],
        response_mask=w["student_mask"],
    )
    length = -(-(CPU.prompt_cap + CPU.response_cap) // packing.PACK_ALIGN) * packing.PACK_ALIGN
    shape = packing.PackShape(rows=args.pack_rows, length=length)
    g_layout, g_packed = packing.pack_padded(*g_rows.values(), shape)
    d_layout, d_packed = packing.pack_discriminator(*w.values(), n, shape)
    rng = np.random.default_rng(1)
    adv = rng.standard_normal(args.prompts * n).astype(np.float32)
    ref = (-11.0 + 0.1 * rng.standard_normal(g_rows["response_ids"].shape)).astype(np.float32)
    g_padded = dict(g_rows, advantages=adv, ref_logprobs=ref)
    g_packed.update(advantages=g_layout.spread_rows(adv), ref_logprobs=g_layout.spread_response(ref))

    mc = ModelConfig.from_hf_dict(SMOLLM2)
    opt = make_optimizer(1e-6)
    key = jax.random.key(0)
    dev = lambda b: {k: jax.numpy.asarray(v) for k, v in b.items()}  # noqa: E731

    def computed(layout) -> int:
        return layout.used * layout.shape.rows * layout.shape.length

    def real(batch_masks) -> int:
        return int(sum(int(m.sum()) for m in batch_masks))

    def timed(name: str, padded, packed) -> dict[str, float]:
        row = dict(padded_s=best_time(padded, args.steps), packed_s=best_time(packed, args.steps))
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
        return row

    out: dict = {}
    wanted = args.programs.split(",")
    g_graph, g_params = nnx.split(Decoder(mc, rngs=nnx.Rngs(0), remat="full"), nnx.Param)
    g_real = real([g_rows["prompt_mask"], g_rows["response_mask"]])
    g_width = g_rows["prompt_ids"].shape[1] + g_rows["response_ids"].shape[1]
    if "ref" in wanted:
        pad_fn = jax.jit(make_logprob_fn(g_graph))
        pack_fn = jax.jit(PK.make_packed_logprob_fn(g_graph))
        a, b = dev(g_padded), dev(g_packed)
        out["ref"] = dict(
            **timed("ref", lambda: np.asarray(pad_fn(g_params, a)), lambda: np.asarray(pack_fn(g_params, b))),
            padded_tokens=len(adv) * g_width,
            packed_tokens=computed(g_layout),
            real_tokens=g_real,
        )
    if "g_step" in wanted:
        state = TrainState.create(g_params, opt)
        pad_fn = jax.jit(make_policy_step(g_graph, opt, PolicyLossConfig()))
        horizon = float(CPU.response_cap)
        pack_fn = jax.jit(PK.make_packed_policy_step(g_graph, opt, PolicyLossConfig(), horizon=horizon))
        a, b = dev(g_padded), dev(g_packed)
        out["g_step"] = dict(
            **timed(
                "g_step",
                lambda: float(pad_fn(state, a, key)[1]["loss"]),
                lambda: float(pack_fn(state, b, key)[1]["loss"]),
            ),
            padded_tokens=len(adv) * g_width,
            packed_tokens=computed(g_layout),
            real_tokens=g_real,
        )
    if "d_step" in wanted:
        d_graph, d_params = nnx.split(Discriminator(mc, rngs=nnx.Rngs(0), remat="full"), nnx.Param)
        state = TrainState.create(d_params, opt)
        pad_fn = jax.jit(make_discriminator_step(d_graph, opt, n_samples=n))
        pack_fn = jax.jit(PK.make_packed_discriminator_step(d_graph, opt, n_samples=n))
        a, b = dev(w), dev(d_packed)
        d_rows = args.prompts * (1 + n)
        out["d_step"] = dict(
            **timed(
                "d_step",
                lambda: float(pad_fn(state, a, key)[1]["loss"]),
                lambda: float(pack_fn(state, b, key)[1]["loss"]),
            ),
            padded_tokens=d_rows * (w["prompt_ids"].shape[1] + w["response_ids"].shape[1]),
            packed_tokens=computed(d_layout),
            real_tokens=real([w["prompt_mask"]] * (1 + n) + [w["response_mask"], w["student_mask"]]),
        )
    for r in out.values():  # (each program also went to stderr as it finished)
        r["ratio"] = r["padded_s"] / r["packed_s"]
        r["token_ratio"] = r["padded_tokens"] / r["packed_tokens"]
    print(
        json.dumps(
            dict(
                bench="packing",
                model="SmolLM2-135M shape, random init, f32, remat full",
                profile="cpu (caps 512/384)",
                prompts=args.prompts,
                samples=n,
                padded_width=[int(w["prompt_ids"].shape[1]), int(w["response_ids"].shape[1])],
                pack=dict(rows=shape.rows, length=shape.length, g_micro=g_layout.used, d_micro=d_layout.used),
                programs=out,
                loadavg=open("/proc/loadavg").read().split()[:3],
            )
        )
    )


if __name__ == "__main__":
    main()
