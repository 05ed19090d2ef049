"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

Every parameter and activation names its dimensions with logical axes (embed, heads, mlp, ...).
This table maps them onto the physical mesh axes (data, fsdp, tensor), in the spirit of MaxText's
`logical_axis_rules`. Changing the parallelism is a change of mesh shape or of this table, never of
model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or tuple of mesh axes or None). First match wins.
# Weights: the embed dimension is split over fsdp (ZeRO-3 style), the "wide" dimension
# (heads / mlp / vocab) over tensor (Megatron style). Activations: batch over data x fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    # LoRA adapters' rank dimension: over fsdp where no other dimension of the adapter already is (B of
    # q/k/v/gate/up has no embed dimension; without this rule it would be replicated on every chip).
    ("lora_rank", "fsdp"),
    ("norm", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

Rules = Sequence[tuple[str, Any]]


def spec_axes(entry: str | Sequence[str] | None) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, one axis name, or a tuple of them) as a tuple."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def logical_to_mesh_axes(logical: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names (unknown names and None stay replicated)."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical:
        axes = table.get(name) if name is not None else None
        axes_t = spec_axes(axes)
        # A mesh axis may shard only one dimension of an array.
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        out.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*out)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (e.g. 3 KV heads on tensor=2): replicate instead.

    jax requires evenly divisible shards; replicating the odd dimension is the safe fallback and costs
    only memory. Dropped axes are logged at debug level.
    """
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        axes_t = spec_axes(axes)
        kept: list[str] = []
        size = 1
        for a in axes_t:
            if dim % (size * mesh.shape[a]) == 0:
                kept.append(a)
                size *= mesh.shape[a]
            else:
                log.debug("replicating dim of size %d over mesh axis %s (not divisible)", dim, a)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def named_sharding(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    """NamedSharding for an array of `shape` whose dimensions carry `logical` names."""
    return NamedSharding(mesh, fit_spec_to_shape(logical_to_mesh_axes(logical, rules), shape, mesh))


# --- activation constraints -----------------------------------------------------------------------
# Model code calls `constrain(x, names)`; it is a no-op unless a trainer activated a mesh with
# `use_mesh`, so models run unchanged on one device, in tests and under jax.eval_shape.

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "gadjax_mesh", default=None
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[Mesh]:
    """Activate `mesh` and `rules` for `constrain` (and as jax's mesh context) within the block."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Rules] | None:
    return _ACTIVE.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names, when a mesh is active; identity otherwise."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(logical, x.shape, mesh, rules))
