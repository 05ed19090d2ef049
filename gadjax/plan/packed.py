"""The packed score and train programs of a gad step (train.packing): ref_logp, d_step, g_step.

Each is compiled for the WORST case, every row at the caps: the power-of-two bucket of the micro-batch
count that takes (gadjax.data.packing.worst_case_micro). A packed program's activations are those of one
[pack_rows, pack_length] micro-batch whatever the count, and its arguments grow with the count, so the
worst bucket's fit proves every step's; the step time comes from the micro-batches a step under the
length profile really runs (gadjax.plan.lengths).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from ml_collections import ConfigDict

from gadjax.data import packing
from gadjax.plan.state import AbstractRun, _optimizer


def packed_specs(config: ConfigDict, run: AbstractRun, sds, rng, shardings, spec_cls) -> list[Any]:
    """ProgramSpecs of the packed ref_logp, d_step and g_step (``sds(shape, dtype, mesh, logical)``,
    ``rng``, ``shardings`` and ``spec_cls`` are gadjax.plan.programs' helpers)."""
    from gadjax.algo.packed import (
        make_packed_discriminator_step,
        make_packed_logprob_fn,
        make_packed_policy_step,
    )
    from gadjax.algo.steps import PolicyLossConfig
    from gadjax.parallel.programs import jit_forward, jit_step

    mesh = run.mesh
    b, n = config.data.batch_size, config.rollout.n_samples
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    g_shape, d_shape = (
        packing.pack_shape(config, "policy", shards),
        packing.pack_shape(config, "disc", shards),
    )
    worst = packing.longest_row(config)
    m_g = packing.micro_bucket(packing.worst_case_micro(b * n, worst, g_shape))
    m_d = packing.micro_bucket(packing.worst_case_micro(b * (1 + n), worst, d_shape, 1 + n))
    i32, f32 = jnp.int32, jnp.float32
    chunk = config.train.logprob_chunk
    t_lp = float(config.rollout.temperature) if config.rollout.temperature > 0 else 1.0

    def tokens(m: int, shape: packing.PackShape, *floats: str) -> dict[str, Any]:
        dims = (m, shape.rows, shape.length)
        arr = lambda dt: sds(dims, dt, mesh, (None, "batch", None))  # noqa: E731
        out = {k: arr(i32) for k in ("ids", "segments", "positions", "targets")}
        out.update({k: arr(f32) for k in ("loss_mask", "row_tokens", *floats)})
        return out

    def what(m: int, shape: packing.PackShape, rows: str) -> str:
        return f"{rows}, packed: worst case {m} micro-batches x [{shape.rows}, {shape.length}]"

    specs = []
    g_tok = tokens(m_g, g_shape)
    ref_in = (run.ref_params, run.g_base) if run.g_base is not None else run.ref_params
    ref_sh = shardings(ref_in)
    ref_fn = jit_forward(
        make_packed_logprob_fn(run.g_graphdef, chunk_size=chunk, temperature=t_lp),
        ref_sh,
        mesh,
        g_tok,
        row_axis=1,
    )
    specs.append(spec_cls("ref_logp", ref_fn, (ref_in, g_tok), ref_in, what(m_g, g_shape, f"{b * n} rows")))

    d_batch = tokens(m_d, d_shape)
    groups = d_shape.rows * d_shape.slots // (1 + n)
    d_batch["ends"] = sds((m_d, d_shape.rows, d_shape.slots), i32, mesh, (None, "batch", None))
    d_batch["groups"] = sds((m_d, groups, 1 + n), i32, mesh, (None, "batch", None))
    d_batch["group_valid"] = sds((m_d, groups), f32, mesh, (None, "batch"))
    d_step = make_packed_discriminator_step(
        run.d_graphdef, _optimizer(config.optim_d, 1000), n_samples=n, loss_type=config.disc.loss
    )
    d_fn = jit_step(
        d_step, shardings(run.d_state), mesh, d_batch, frozen_shardings=shardings(run.d_base), row_axis=1
    )
    d_frozen = () if run.d_base is None else (run.d_base,)
    specs.append(
        spec_cls(
            "d_step",
            d_fn,
            (run.d_state, d_batch, rng(mesh), *d_frozen),
            (run.d_state, *d_frozen),
            what(m_d, d_shape, f"{b} teacher + {b * n} student rows"),
        )
    )

    pg_batch = tokens(m_g, g_shape, "advantages", "ref_logprobs")
    g_step = make_packed_policy_step(
        run.g_graphdef,
        _optimizer(config.optim_g, 1000),
        PolicyLossConfig(**config.loss.to_dict()),
        horizon=float(config.rollout.max_new_tokens),
        chunk_size=chunk,
        temperature=t_lp,
    )
    g_fn = jit_step(
        g_step, shardings(run.g_state), mesh, pg_batch, frozen_shardings=shardings(run.g_base), row_axis=1
    )
    g_frozen = () if run.g_base is None else (run.g_base,)
    specs.append(
        spec_cls(
            "g_step",
            g_fn,
            (run.g_state, pg_batch, rng(mesh), *g_frozen),
            (run.g_state, *g_frozen),
            what(m_g, g_shape, f"{b * n} rows"),
        )
    )
    return specs


def packed_model_flops(config: ConfigDict, mc: Any, lengths: dict[str, Any]) -> dict[str, float]:
    """Analytic FLOPs of the packed programs for the micro-batches a step under the profile runs
    (``lengths``: gadjax.plan.lengths.program_tokens): every position of each run micro-batch computes,
    and the attention is causal over the whole packed sequence (the kernels skip no cross-row block)."""
    params = mc.param_count()
    attn = lambda t: 2 * 2 * mc.num_layers * t * t * mc.num_heads * mc.head_dim  # noqa: E731
    fwd = lambda rows, t: rows * (2 * params * t + attn(t) / 2)  # noqa: E731
    seqs = {
        k: lengths[k]["micro_batches"] * lengths[k]["pack_rows"] for k in ("ref_logp", "d_step", "g_step")
    }
    length = lambda k: lengths[k]["pack_length"]  # noqa: E731
    return {
        "ref_logp": fwd(seqs["ref_logp"], length("ref_logp")),
        "d_step": 3 * fwd(seqs["d_step"], length("d_step")),
        "g_step": 3 * fwd(seqs["g_step"], length("g_step")),
    }
