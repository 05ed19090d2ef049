"""Attention's share of the G step's temporaries per TPU chip, compile-only (issue 14; no TPU needed).

Two measurements, both compiled by libtpu for a slice that does not exist here (as gadjax.plan does):

  kernel   attention alone, forward + backward (one `jax.vjp`, as a fully rematerialised layer body runs
           it: the forward is recomputed right before its backward, so its residuals live then), on the
           G step's mesh and per-micro-batch rows, for each backend. q, k, v, the output gradient and
           dq, dk, dv are the program's arguments and outputs, so XLA's `temp` is what the attention
           algorithm itself needs on top of its inputs and outputs (xla: the [B, H, T, T] scores,
           probabilities and their gradients; splash: the kernel's blocks and statistics).
  g_step   the plan's whole G step with `--layers` decoder layers, for each backend, plus a control
           ("none") whose attention is replaced by q + k + v broadcast over each KV group: the same
           inputs and output shapes and gradients, no [T, T] work. temp(backend) - temp(none) is what
           that backend adds to the step's peak (it understates a backend whose own peak stays below
           the step's peak elsewhere, e.g. the log-prob head; the kernel measurement does not).

One JSON line per measurement. The model shape, batch, micro-batches and mesh come from the config:

    JAX_PLATFORMS=cpu python bench/attention_plan.py --config configs/v5p.py --topology v5p-64 --what kernel
    JAX_PLATFORMS=cpu python bench/attention_plan.py --config configs/v5p.py --topology v5p-64 \\
        --what g_step --layers 1 --backends splash,none
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gadjax.models import attention as A  # noqa: E402
from gadjax.plan.topology import GiB  # noqa: E402

CONTROL = "none"


def control_attend(backend, q, k, v, key_valid, mask, cached=None) -> jax.Array:
    """Stand-in for A.attend with no attention work: q + k + v (each KV head broadcast to its group)."""
    group = q.shape[2] // k.shape[2]
    return q + jnp.repeat(k, group, axis=2) + jnp.repeat(v, group, axis=2)


def _temp(compiled: Any) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


def kernel_temp(config: ConfigDict, topology: str, backend: str) -> dict[str, Any]:
    """XLA temporaries per chip of attention's forward + backward alone, at the G step's micro-batch."""
    from gadjax.parallel.rules import named_sharding, use_mesh
    from gadjax.plan.run import make_plan_mesh
    from gadjax.plan.state import model_config_of
    from gadjax.plan.topology import parse_topology, topology_devices

    mc = model_config_of(config)
    mesh = make_plan_mesh(config, topology_devices(parse_topology(topology)))
    rows = config.data.batch_size * config.rollout.n_samples // config.train.micro_batches_g
    t = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    dt = jnp.dtype(config.model.dtype)
    act = ("batch", "length", "act_heads", "head_dim")

    def sds(shape: tuple[int, ...], dtype: Any, names: tuple[str, ...]) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(names, shape, mesh))

    q = sds((rows, t, mc.num_heads, mc.head_dim), dt, act)
    kv = sds((rows, t, mc.num_kv_heads, mc.head_dim), dt, act)
    valid = sds((rows, t), jnp.bool_, ("batch", "length"))
    attend = control_attend if backend == CONTROL else A.attend

    def fwd_bwd(q, k, v, key_valid, g):
        # The dense mask is built from key_valid here, as the decoder does for the DENSE_MASK backends.
        mask = A.causal_mask(key_valid) if backend in A.DENSE_MASK else None
        _, vjp = jax.vjp(lambda q, k, v: attend(backend, q, k, v, key_valid, mask), q, k, v)
        return vjp(g)

    t0 = time.perf_counter()
    with use_mesh(mesh):
        compiled = jax.jit(fwd_bwd).lower(q, kv, kv, valid, q).compile()
    return {
        "what": "kernel",
        "backend": backend,
        "topology": topology,
        "rows_per_micro_batch": rows,
        "tokens": t,
        "mesh": dict(mesh.shape),
        "temp_bytes_per_chip": _temp(compiled),
        "temp_gib_per_chip": round(_temp(compiled) / GiB, 3),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


def g_step_temp(config: ConfigDict, topology: str, backend: str, layers: int) -> dict[str, Any]:
    """XLA temporaries per chip of the plan's G step with `layers` layers and `backend` (or the control)."""
    from gadjax.plan.run import run_plan

    c = ConfigDict(config.to_dict())
    c.model.random_init.hf_config.num_hidden_layers = layers
    c.model.attention = "splash" if backend == CONTROL else backend  # the control needs no dense mask
    real = A.attend
    A.attend = control_attend if backend == CONTROL else real
    try:
        rep = run_plan(c, topology, ("g_step",), log=None)
    finally:
        A.attend = real
    g = rep["programs"]["g_step"]
    return {
        "what": "g_step",
        "backend": backend,
        "topology": topology,
        "layers": layers,
        "mesh": rep["mesh"],
        "temp_bytes_per_chip": int(g["memory"]["temp"]),
        "temp_gib_per_chip": round(g["memory"]["temp"] / GiB, 3),
        "compile_s": g["compile_seconds"],
    }


def _main(argv: list[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    for backend in [b.strip() for b in f.backends.split(",") if b.strip()]:
        if f.what == "kernel":
            out = kernel_temp(f.config, f.topology, backend)
        else:
            out = g_step_temp(f.config, f.topology, backend, f.layers)
        out.update(jax=jax.__version__)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from gadjax.cli import quiet_tpu_start

    quiet_tpu_start()
    config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=False)
    flags.DEFINE_string("topology", "v5p-64", "TPU slice, as gadjax.plan takes it")
    flags.DEFINE_enum("what", "kernel", ["kernel", "g_step"], "attention alone, or the whole G step")
    flags.DEFINE_string("backends", f"xla,splash,{CONTROL}", f"comma-separated backends (and {CONTROL!r})")
    flags.DEFINE_integer("layers", 1, "decoder layers for --what g_step")
    flags.mark_flags_as_required(["config"])
    app.run(_main)
