"""Placing model parameters on a mesh by their logical axis names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from gadjax.parallel.rules import DEFAULT_RULES, Rules, named_sharding

M = TypeVar("M", bound=nnx.Module)


def logical_names(leaf: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names a parameter was created with (all None when it has none)."""
    return leaf.get_metadata().get("out_sharding") or (None,) * len(leaf.shape)


def state_shardings(module_or_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """NamedSharding of every Param of a (possibly abstract) module or state, as a State pytree."""
    if isinstance(module_or_state, nnx.State):
        state = module_or_state
    else:
        state = nnx.state(module_or_state, nnx.Param)

    def one(leaf: nnx.Variable) -> NamedSharding:
        return named_sharding(logical_names(leaf), leaf.shape, mesh, rules)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_sharded(ctor: Callable[[], M], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> M:
    """Build the module returned by `ctor` with every parameter created directly in its sharding
    (a jit with out_shardings: no device ever holds a full unsharded copy)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    shardings = state_shardings(abstract, mesh, rules)

    @jax.jit
    def make() -> nnx.State:
        return jax.lax.with_sharding_constraint(nnx.state(ctor()), shardings)

    state = jax.jit(make, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_module(module: M, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> M:
    """Move an existing module's parameters into their shardings on `mesh`."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh, rules)))
