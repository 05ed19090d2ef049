"""Jitting train steps over a mesh: explicit in/out shardings for the state and batch, donated state.

The parameter shardings come from the logical-axis rule table; optimizer-state leaves (Adam's mu and nu
mirror the parameter tree) take the sharding of the parameter whose path they end with, everything
else (step counts, hyperparameters) is replicated. Batches are split over the ("data", "fsdp") axes by
their row dimension: the leading one, or the second for packed batches ([micro-batches, rows, ...],
gadjax.data.packing: `row_axis=1`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gadjax.algo.steps import TrainState
from gadjax.parallel.rules import DEFAULT_RULES, Rules, named_sharding


def _key(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _names(path: tuple) -> tuple[str, ...]:
    """A tree path as names, without nnx's `value` attribute keys (a Variable's array is at `.value`,
    so an optimizer moment of parameter blocks/q has the path .../mu/blocks/q/value)."""
    return tuple(n for n in (_key(k) for k in path) if n != "value")


def like_params_shardings(tree: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for `tree` (e.g. an optimizer state): a leaf whose path ENDS with a parameter's path
    and has its shape gets that parameter's sharding; any other leaf is replicated."""
    by_path: dict[tuple[str, ...], NamedSharding] = {}
    for path, sh in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
        by_path[_names(path)] = sh
    longest = max((len(p) for p in by_path), default=0)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys = _names(path)
        for start in range(max(0, len(keys) - longest), len(keys)):
            sh = by_path.get(keys[start:])
            if sh is not None and len(sh.spec) <= len(getattr(leaf, "shape", ())):
                return sh
        return replicated

    return jax.tree_util.tree_map_with_path(one, tree)


def train_state_shardings(abstract_state: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
    """TrainState of NamedShardings matching `abstract_state` (from jax.eval_shape)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=like_params_shardings(abstract_state.opt_state, param_shardings, mesh),
    )


def batch_shardings(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, row_axis: int = 0) -> Any:
    """Each array's `row_axis` dimension over the "batch" logical axis (data x fsdp), the rest replicated."""

    def one(x: Any) -> NamedSharding:
        shape = tuple(x.shape)
        names = (None,) * row_axis + ("batch",) + (None,) * (len(shape) - 1 - row_axis)
        return named_sharding(names, shape, mesh, rules)

    return jax.tree.map(one, batch)


def shard_batch(
    batch: dict[str, Any], mesh: Mesh, rules: Rules = DEFAULT_RULES, row_axis: int = 0
) -> dict[str, jax.Array]:
    """Place a host batch (numpy, the same on every process) on the mesh with batch_shardings."""
    return jax.device_put(batch, batch_shardings(batch, mesh, rules, row_axis))


def jit_step(
    step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    state_shardings: TrainState,
    mesh: Mesh,
    batch_example: dict[str, Any],
    rules: Rules = DEFAULT_RULES,
    frozen_shardings: Any = None,
    row_axis: int = 0,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """jax.jit(step) with explicit shardings: state (donated), batch by rows, rng and metrics replicated.
    With `frozen_shardings` (LoRA) the step takes a fourth argument, the frozen base: not donated, so it
    can be shared (G's base with the KL reference)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    ins = (state_shardings, batch_shardings(batch_example, mesh, rules, row_axis), replicated)
    if frozen_shardings is not None:
        ins = (*ins, frozen_shardings)
    return jax.jit(
        step,
        in_shardings=ins,
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def jit_forward(
    fn: Callable[[Any, dict[str, Any]], jax.Array],
    param_shardings: Any,
    mesh: Mesh,
    batch_example: dict[str, Any],
    rules: Rules = DEFAULT_RULES,
    row_axis: int = 0,
) -> Callable[[Any, dict[str, Any]], jax.Array]:
    """jax.jit of a forward-only (params, batch) -> per-row array function, rows split like the batch."""
    lead = next(iter(batch_example.values())).shape[: row_axis + 1]
    out = named_sharding((None,) * row_axis + ("batch",), lead, mesh, rules)
    ins = (param_shardings, batch_shardings(batch_example, mesh, rules, row_axis))
    return jax.jit(fn, in_shardings=ins, out_shardings=out)
