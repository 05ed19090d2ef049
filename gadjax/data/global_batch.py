"""Assemble per-host numpy batches into global jax.Arrays sharded over the mesh's batch axes.

Each process holds its local rows (``gadjax.data.pipeline``); ``jax.make_array_from_process_local_data``
stitches them along the batch dimension. Buckets are chosen per host, so hosts may hold different P / R:
the shapes are agreed first (an all-gather of two integers) and every host pads up to the largest,
prompts on the LEFT and responses on the RIGHT, which keeps the layout of the shared contract.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gadjax.data.batching import pad_batch_to


def agree_shapes(local_batch: dict[str, np.ndarray]) -> tuple[int, int | None]:
    """Largest (P, R) over all processes (R is None for prompts-only batches)."""
    p = local_batch["prompt_ids"].shape[1]
    r = local_batch["response_ids"].shape[1] if "response_ids" in local_batch else -1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        shapes = np.asarray(multihost_utils.process_allgather(np.asarray([p, r], np.int32)))
        p, r = (int(x) for x in shapes.reshape(-1, 2).max(axis=0))
    return p, (None if r < 0 else r)


def make_global_batch(
    local_batch: dict[str, np.ndarray],
    mesh: Mesh,
    partition_spec: PartitionSpec = PartitionSpec(("data", "fsdp")),
    pad_id: int = 0,
) -> dict[str, jax.Array]:
    """Global arrays whose leading (batch) dimension is sharded by ``partition_spec``.

    Args:
      local_batch: this process's batch dict (numpy, leading dim = local batch).
      mesh: the device mesh (axes "data", "fsdp", "tensor").
      partition_spec: spec of the batch dimension; trailing dims are replicated.
      pad_id: the tokenizer's pad id, used when widening to the common P / R.

    ``example_id`` (int64 on the host) becomes jax's canonical integer on device (int32 unless
    ``jax_enable_x64``); keep the host copy when ids above 2**31 matter.
    """
    p, r = agree_shapes(local_batch)
    batch = pad_batch_to(local_batch, p, r, pad_id)
    out: dict[str, Any] = {}
    for name, value in batch.items():
        spec = PartitionSpec(*partition_spec, *([None] * (value.ndim - len(partition_spec))))
        out[name] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)
    return out
