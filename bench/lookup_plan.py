"""The embedding lookup's forward + table gradient compiled alone for a TPU slice, compile-only (issue 14).

Compares the plain `jnp.take` (GSPMD partitions it) with gadjax.parallel.lookup.take_rows at
configs/v5p.py's shapes (Qwen2.5-7B table [152064, 3584] f32, one G micro-batch of 128 rows x 3584 tokens,
bf16 output, the gradient in the table's sharding as in the G step). One JSON line per lookup: XLA's
temporaries per chip and the collectives of the compiled program (shape and kind).

    JAX_PLATFORMS=cpu python bench/lookup_plan.py --topology v5p-16 --mesh 1,-1,1
    JAX_PLATFORMS=cpu python bench/lookup_plan.py --topology v5p-16 --mesh 2,2,2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# "%x = f32[..]{..} all-reduce(", or async "%x = (f32[..]{..}, ...) all-gather-start(": the first shape.
KINDS = "all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute"
COLLECTIVE = re.compile(rf"= \(?(\w+\[[\d,]*\])[^=\n]*? ({KINDS})(-start)?\(")


def measure(topology: str, mesh_shape: tuple[int, ...], lookup: str) -> dict:
    import jax
    import jax.numpy as jnp

    from gadjax.parallel.lookup import take_rows
    from gadjax.parallel.mesh import make_mesh
    from gadjax.parallel.rules import constrain, named_sharding, use_mesh
    from gadjax.plan.topology import GiB, parse_topology, topology_devices

    mesh = make_mesh(mesh_shape, topology_devices(parse_topology(topology)))
    v, h, b, t = 152064, 3584, 128, 3584

    def sds(shape, dtype, names):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(names, shape, mesh))

    table = sds((v, h), jnp.float32, ("vocab", "embed"))
    ids = sds((b, t), jnp.int32, ("batch", "length"))
    w = sds((b, t, h), jnp.bfloat16, ("batch", "length", "act_embed"))

    def loss(e, i, w):
        x = jnp.take(e, i, axis=0).astype(jnp.bfloat16) if lookup == "take" else take_rows(e, i, jnp.bfloat16)
        return jnp.sum((constrain(x, ("batch", "length", "act_embed")) * w).astype(jnp.float32))

    with use_mesh(mesh):
        compiled = jax.jit(jax.grad(loss), out_shardings=table.sharding).lower(table, ids, w).compile()
    ma = compiled.memory_analysis()
    return {
        "lookup": lookup,
        "topology": topology,
        "mesh": dict(mesh.shape),
        "temp_gib_per_chip": round(ma.temp_size_in_bytes / GiB, 3),
        "temp_bytes_per_chip": int(ma.temp_size_in_bytes),
        "collectives": [f"{m.group(2)} {m.group(1)}" for m in COLLECTIVE.finditer(compiled.as_text())],
        "jax": jax.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="v5p-16")
    p.add_argument("--mesh", default="1,-1,1", help="(data, fsdp, tensor), -1: the rest")
    a = p.parse_args()
    from gadjax.cli import quiet_tpu_start

    quiet_tpu_start()
    shape = tuple(int(x) for x in a.mesh.split(","))
    for lookup in ("take", "take_rows"):
        print(json.dumps(measure(a.topology, shape, lookup)), flush=True)


if __name__ == "__main__":
    main()
