"""The abstract run state: G, D and the reference as sharded ShapeDtypeStructs (nothing allocated)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from ml_collections import ConfigDict

from gadjax.plan.errors import PlanError


def model_config_of(config: ConfigDict):
    """ModelConfig from model.random_init.hf_config (no files needed) or model.path's config.json."""
    from gadjax.models.config import ModelConfig

    hf = dict(config.model.random_init.hf_config or {})
    if hf:
        return ModelConfig.from_hf_dict(hf, source="config.model.random_init.hf_config")
    path = os.path.join(config.model.path, "config.json")
    if not config.model.path or not os.path.exists(path):
        raise PlanError(
            "the plan needs the model's shape: set model.random_init.hf_config (a HF config.json dict) "
            f"or point model.path at a directory with config.json (tried {path!r})"
        )
    with open(path) as f:
        return ModelConfig.from_hf_dict(json.load(f), source=path)


def _optimizer(o: ConfigDict, total_steps: int):
    from gadjax.algo.optim import make_optimizer

    return make_optimizer(
        o.lr,
        o.schedule,
        o.warmup_steps,
        max(total_steps, o.warmup_steps + 1),
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        grad_clip_norm=o.grad_clip_norm,
        weight_decay_mask=o.weight_decay_mask,
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying the matching leaves of `shardings` (same leaf order)."""
    sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    leaves, treedef = jax.tree.flatten(abstract)
    if len(sh) != len(leaves):
        raise PlanError(f"internal: {len(leaves)} arrays but {len(sh)} shardings")
    return treedef.unflatten(
        [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, sh, strict=True)]
    )


def per_chip_bytes(tree: Any) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (the largest shard of each)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class AbstractRun:
    mesh: Mesh
    g_graphdef: Any
    d_graphdef: Any
    g_state: Any  # TrainState of sharded ShapeDtypeStructs
    d_state: Any
    ref_params: Any
    model_config: Any
    notes: list[str] = dataclasses.field(default_factory=list)
    # LoRA (model.lora / disc.lora): the frozen bases (None: full fine-tuning) and G's graphdef without
    # adapters, which the rollout samples from (the adapters merged into a transient copy of the base).
    g_base: Any = None
    d_base: Any = None
    g_plain_graphdef: Any = None
    d_base_shared: bool = False  # D's frozen backbone is G's frozen base (gadjax.trainer.adapters)

    def resident(self) -> tuple[Any, ...]:
        """The long-lived trees: both TrainStates, the reference and the frozen bases."""
        d_base = None if self.d_base_shared else self.d_base
        trees = (self.g_state, self.d_state, self.ref_params, self.g_base, d_base)
        return tuple(x for x in trees if x is not None)


def _split(ctor: Any, lora_node: Any, base_dtype: str, blocks_of: Any, with_head: bool) -> tuple:
    """(graphdef, plain graphdef, trainable params, frozen base or None) of an abstract model."""
    from gadjax.models import lora

    cfg = lora.lora_config(lora_node)
    plain, params = nnx.split(nnx.eval_shape(ctor), nnx.Param)
    if cfg is None:
        return plain, plain, params, None

    def with_adapters():
        m = ctor()
        lora.attach(blocks_of(m), cfg, jax.random.key(0))
        return m

    graphdef, params, base = nnx.split(
        nnx.eval_shape(with_adapters), lora.trainable_filter(with_head), nnx.Param
    )
    if base_dtype:
        dt = jnp.dtype(base_dtype)
        base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), base)
    return graphdef, plain, params, base


def build_abstract(config: ConfigDict, mesh: Mesh) -> AbstractRun:
    """G (Decoder) + optimizer, D (Discriminator) + optimizer, reference params: shapes and shardings only."""
    from gadjax.algo.steps import TrainState
    from gadjax.models.attention import resolve as resolve_attention
    from gadjax.models.decoder import Decoder
    from gadjax.models.discriminator import Discriminator
    from gadjax.models.sharding import state_shardings
    from gadjax.parallel.programs import train_state_shardings

    mc = model_config_of(config)
    dt, pdt = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
    remat = config.model.remat
    # The programs target a TPU, whatever this host runs: "auto" means splash here.
    attention = resolve_attention(config.model.attention, platform="tpu", dtype=dt)
    # materialize_grads: a CPU-only speed-up (layers.dense); these are TPU programs.
    kw = dict(dtype=dt, param_dtype=pdt, remat=remat, attention=attention, materialize_grads=False)
    head = dict(head_init=config.disc.head_init, head_std=config.disc.head_std)
    bdt = config.model.get("base_dtype", "")
    g_parts = _split(
        lambda: Decoder(mc, rngs=nnx.Rngs(0), **kw), config.model.lora, bdt, lambda m: m.blocks, False
    )
    d_parts = _split(
        lambda: Discriminator(mc, rngs=nnx.Rngs(0), **kw, **head),
        config.disc.lora,
        bdt,
        lambda m: m.backbone.blocks,
        True,
    )
    steps = int(config.train.steps) or 1000
    out = {}
    notes: set[str] = set()
    for tag, parts, optim in (("g", g_parts, config.optim_g), ("d", d_parts, config.optim_d)):
        graphdef, _, params, base = parts
        opt = _optimizer(optim, steps)
        abs_state = jax.eval_shape(lambda p, opt=opt: TrainState.create(p, opt), params)
        psh = state_shardings(params, mesh)
        sh = train_state_shardings(abs_state, psh, mesh)
        base = None if base is None else with_shardings(base, state_shardings(base, mesh))
        out[tag] = (graphdef, with_shardings(abs_state, sh), with_shardings(params, psh), base)
    return AbstractRun(
        mesh=mesh,
        g_graphdef=out["g"][0],
        d_graphdef=out["d"][0],
        g_state=out["g"][1],
        d_state=out["d"][1],
        ref_params=out["g"][2],  # the frozen reference: G's parameters (LoRA: adapters) at the stage start
        model_config=mc,
        notes=sorted(notes),
        g_base=out["g"][3],
        d_base=out["d"][3],
        g_plain_graphdef=g_parts[1],
        d_base_shared=g_parts[3] is not None and d_parts[3] is not None and not config.disc.path,
    )


def trainable_bytes(run: AbstractRun) -> dict[str, int]:
    """Per-chip bytes of what trains: G's and D's trainable params and their optimizer states."""
    return {
        "g_params": per_chip_bytes(run.g_state.params),
        "g_opt_state": per_chip_bytes(run.g_state.opt_state),
        "d_params": per_chip_bytes(run.d_state.params),
        "d_opt_state": per_chip_bytes(run.d_state.opt_state),
    }
