"""Embedding lookup that stays sharded: each device reads rows of its own shard of the table.

The table is [vocab, embed] sharded by the rule table (vocab over tensor, embed over fsdp) and the token
ids [batch, length] have batch over (data, fsdp). A plain `jnp.take` left the partitioning to GSPMD,
which on a mesh with data, fsdp and tensor all > 1 gathered the table over vocab and then could not move
the result from embed-sharded to batch-sharded: "[SPMD] Involuntary full rematerialization" (every device
built the whole [batch, length, embed] output; the table's gradient was all-reduced over every vocab row).

Here, under a shard_map, every device
  1. gathers the ids of the devices that hold the other column blocks of its vocab rows (ints: small),
  2. takes the rows of its own vocab range (ids outside it read zeros),
  3. sums over the vocab axes (every id is in exactly one range, so the sum adds exact zeros),
and the result, embed-sharded, is handed to GSPMD's all-to-all to become batch-sharded. The backward is
a scatter-add into the local shard; no device holds more than its shard of the table or its gradient.
A table whose vocab is not sharded (pure FSDP, the TPU plan's mesh) keeps the plain take.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from gadjax.parallel.rules import active_mesh, named_sharding, spec_axes


def take_rows(table: jax.Array, ids: jax.Array, dtype: Any) -> jax.Array:
    """table[ids] cast to `dtype`: [vocab, embed] x [batch, length] -> [batch, length, embed].

    Sharded lookup under an active mesh (gadjax.parallel.rules.use_mesh), plain take otherwise, or when
    the shardings are ones this lookup does not cover (then GSPMD partitions the take, as before)."""
    active = active_mesh()
    if active is None or ids.ndim != 2:
        return jnp.take(table, ids, axis=0).astype(dtype)
    mesh, rules = active
    axes = lambda spec: tuple(_real_axes(mesh, a) for a in spec)  # noqa: E731
    vocab, embed = axes(named_sharding(("vocab", "embed"), table.shape, mesh, rules).spec)
    batch, length = axes(named_sharding(("batch", "length"), ids.shape, mesh, rules).spec)
    table_axes = vocab + embed
    gather = tuple(a for a in batch if a in table_axes)
    # Without vocab sharding GSPMD partitions the take as this would (ids all-gather, local take, all-to-all
    # in the v5p-16 compile), and there the shard_map cost the rollout / ref / D programs 0.26 GiB more
    # temporaries. The ids to gather must be the minor part of the batch sharding (a contiguous block of
    # rows per device), and the length dimension must not be split over the table's axes.
    if not vocab or batch[len(batch) - len(gather) :] != gather or set(length) & set(table_axes):
        return jnp.take(table, ids, axis=0).astype(dtype)
    rows_per_shard = table.shape[0] // math.prod(mesh.shape[a] for a in vocab)
    rest = batch[: len(batch) - len(gather)]

    def local(tab: jax.Array, idx: jax.Array) -> jax.Array:
        if gather:
            idx = jax.lax.all_gather(idx, gather, axis=0, tiled=True)
        rel = idx - jax.lax.axis_index(vocab) * rows_per_shard
        # Ids of other shards become out of bounds, which the take fills with zeros (and its transpose
        # drops): a select on the rows instead cost a float32 copy of their gradient (TPU compile).
        rel = jnp.where((rel >= 0) & (rel < rows_per_shard), rel, rows_per_shard)
        # Cast after the take, as before: the backward's scatter-add of repeated tokens stays float32.
        rows = jnp.take(tab, rel, axis=0, mode="fill", fill_value=0).astype(dtype)
        return jax.lax.psum(rows, vocab)

    spec = lambda *axes: PartitionSpec(*(a or None for a in axes))  # noqa: E731
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec(vocab, embed), spec(batch, length)),
        out_specs=spec(rest, length, embed),
    )(table, ids)


def _real_axes(mesh: Any, entry: Any) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry, without those of size 1 (they split nothing)."""
    return tuple(a for a in spec_axes(entry) if mesh.shape[a] > 1)
