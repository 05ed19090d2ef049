"""How the trainer holds a model: all of it trainable (full fine-tuning), or LoRA adapters over a frozen base.

`split_trainable` turns a built Decoder / Discriminator into a `ModelParts`: the graphdef the train steps
merge, the trainable params (the TrainState's), the frozen base (None for full fine-tuning) and the
graphdef of the same model WITHOUT adapters, whose state `full_params` gives: the merged weights
W + scale * A B, made once per rollout / evaluation / export (see gadjax.models.lora for why merged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from gadjax.models import lora
from gadjax.models.discriminator import Discriminator
from gadjax.models.sharding import state_shardings
from gadjax.parallel.rules import use_mesh


@dataclasses.dataclass
class ModelParts:
    """A model as the trainer holds it (see the module doc)."""

    graphdef: nnx.GraphDef
    plain_graphdef: nnx.GraphDef
    base: nnx.State | None
    lora: lora.LoraConfig | None
    mesh: Mesh
    _merge: Any = None

    @property
    def base_shardings(self) -> Any:
        return None if self.base is None else state_shardings(self.base, self.mesh)

    def full_params(self, params: Any) -> Any:
        """The plain model's params (use with `plain_graphdef`): `params` itself without LoRA, else the
        base with the adapters merged in (a new copy of the adapted weights)."""
        if self.base is None:
            return params
        if self._merge is None:  # only the adapted weights are new arrays; the rest is the base's
            scale = self.lora.scale
            fn = lambda p, b: lora.merged_weights(p, b, scale)
            shardings = dict(nnx.to_flat_state(self.base_shardings))
            paths = jax.eval_shape(fn, params, self.base)
            self._merge = jax.jit(fn, out_shardings={k: shardings[k] for k in paths})
        with use_mesh(self.mesh):
            return lora.replace_weights(self.base, self._merge(params, self.base))

    def step_inputs(self, params: Any) -> Any:
        """What a forward-only program takes as its params: the params, or (params, base) with LoRA."""
        return params if self.base is None else (params, self.base)

    def module(self, params: Any) -> nnx.Module:
        """The plain model (adapters merged) as an nnx module, e.g. for a Hugging Face export."""
        return nnx.merge(self.plain_graphdef, self.full_params(params))


def split_trainable(
    model: nnx.Module, cfg: lora.LoraConfig | None, key: jax.Array, mesh: Mesh, base_dtype: Any = None
) -> tuple[ModelParts, nnx.State]:
    """(ModelParts, trainable params) of a freshly built model. With a LoraConfig, adapters are attached
    to its blocks (B = 0: the model is unchanged), the base is frozen and optionally cast to base_dtype;
    a Discriminator's scalar head stays trainable."""
    plain_graphdef, params = nnx.split(model, nnx.Param)
    if cfg is None:
        return ModelParts(plain_graphdef, plain_graphdef, None, None, mesh), params
    is_disc = isinstance(model, Discriminator)
    lora.attach((model.backbone if is_disc else model).blocks, cfg, key)
    graphdef, params, base = nnx.split(model, lora.trainable_filter(is_disc), nnx.Param)
    if base_dtype is not None:
        base = lora.cast_base(base, base_dtype)
    return ModelParts(graphdef, plain_graphdef, base, cfg, mesh), params


def share_backbone(d: ModelParts, g: ModelParts) -> None:
    """Let D's frozen backbone BE G's frozen base (one copy in memory, not two). Valid when both are LoRA
    and D's backbone was initialised from the student: their frozen weights are then the same values,
    and frozen bases are never donated or updated."""
    g_flat = dict(nnx.to_flat_state(g.base))
    flat = []
    for path, leaf in nnx.to_flat_state(d.base):
        src = g_flat.get(path[1:]) if path[0] == "backbone" else None
        if src is not None and src.shape == leaf.shape and src.dtype == leaf.dtype:
            leaf = leaf.replace(src[...])
        flat.append((path, leaf))
    d.base = nnx.from_flat_state(flat)


def param_bytes(tree: Any) -> int:
    """Bytes of the arrays in a params / optimizer-state tree (for the logs and the plan)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def validate(c: Any, fail: Callable[[str, str], None], dtypes: tuple[str, ...]) -> None:
    """Check model.lora / disc.lora / model.base_dtype (``fail(key, message)`` raises)."""
    for key in ("model.lora", "disc.lora"):
        node = c.model.lora if key == "model.lora" else c.disc.lora
        if not isinstance(node.rank, int) or node.rank < 0:
            fail(f"{key}.rank", f"must be an integer >= 0 (0 = off), got {node.rank!r}")
        if not node.rank:
            continue
        if node.alpha <= 0:
            fail(f"{key}.alpha", f"must be > 0 (scale = alpha / rank), got {node.alpha}")
        if node.dropout != 0:
            fail(f"{key}.dropout", f"LoRA dropout is not implemented; set 0 (got {node.dropout})")
        if isinstance(node.targets, str):
            fail(f"{key}.targets", f"must be a tuple of patterns, got the string {node.targets!r}")
        try:
            lora.resolve_targets(tuple(node.targets))
        except ValueError as e:
            fail(f"{key}.targets", str(e))
    if c.model.base_dtype:
        if c.model.base_dtype not in dtypes:
            fail("model.base_dtype", f"{c.model.base_dtype!r} is not one of {dtypes} (or '')")
        if not c.model.lora.rank and not (c.disc.lora.rank and c.stage != "seqkd"):
            fail("model.base_dtype", "applies to a frozen LoRA base: set model.lora.rank or disc.lora.rank")
