"""Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's stacked projection weights.

A targeted projection W (e.g. `blocks.q`, [layers, embed, heads, head_dim]) gets two `nnx.LoRAParam`s
next to it in the same `Blocks` module: `q_lora_a` [layers, in..., rank] and `q_lora_b` [layers, rank,
out...], and the layer computes x W + scale * (x A) B with scale = alpha / rank. A starts like PEFT's
(Kaiming-uniform, bound 1 / sqrt(fan_in)) and B at zero, so a fresh adapter leaves the model unchanged.

Why not qwix: qwix's LoraProvider intercepts the einsum / dot_general calls a module makes and creates
the adapter variables during that call. gadjax's decoder runs its layers in a `jax.lax.scan` over stacked
raw arrays, so the weights reach the einsums as scan slices and qwix tries to create variables inside
the scan trace (flax raises TraceContextError). Stacked adapters added here keep the one-layer-body scan.

Trainable = the LoRAParams (plus the discriminator's head); everything else is the frozen base. The
train steps take the base as a separate, non-donated argument, so G's base can be shared with the
KL reference (base + a copy of the warmup adapters) and never gets an optimizer state.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.parallel.rules import named_sharding

# Our stacked weight name -> Hugging Face / PEFT module name, and how many leading (after `layers`)
# weight axes are the input: o is [layers, heads, head_dim, embed] with (heads, head_dim) in.
TARGETS: dict[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
_IN_AXES = {"o": 2}
RANK_AXIS = "lora_rank"  # the rule table shards it over fsdp unless another dimension already is


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (scale = alpha / r) and the targeted weights (our names, e.g. ("q", "v"))."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def resolve_targets(patterns: Sequence[str]) -> tuple[str, ...]:
    """Our weight names matched by fnmatch `patterns` over the HF module names (q_proj ... down_proj) or
    ours (q ... down); "attention" and "mlp" name the two groups. Raises ValueError naming a pattern that
    matches nothing."""
    groups = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}
    out: list[str] = []
    for pat in patterns:
        hit = list(groups.get(pat, ()))
        hit += [n for n, hf in TARGETS.items() if fnmatch.fnmatchcase(hf, pat) or fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"LoRA target {pat!r} matches none of {sorted(TARGETS.values())}")
        out += [n for n in hit if n not in out]
    return tuple(n for n in TARGETS if n in out)  # canonical order


def lora_config(c: Any) -> LoraConfig | None:
    """The LoraConfig of a `model.lora` / `disc.lora` config node (None when rank is 0: LoRA off)."""
    if not c.rank:
        return None
    return LoraConfig(int(c.rank), float(c.alpha), resolve_targets(tuple(c.targets)))


def _split_shape(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input dims, output dims) of stacked weight `name` of `shape` (without the leading layers)."""
    k = _IN_AXES.get(name, 1)
    return shape[1 : 1 + k], shape[1 + k :]


def attach(blocks: nnx.Module, cfg: LoraConfig, key: jax.Array) -> None:
    """Add A (Kaiming-uniform like PEFT) and B (zeros) LoRAParams for every target to `blocks` (a
    decoder's `Blocks`), placed like the weight they adapt (same mesh, input / output axes' sharding)."""
    for i, name in enumerate(cfg.targets):
        w = getattr(blocks, name)
        arr = w[...]
        names = w.get_metadata().get("out_sharding") or (None,) * arr.ndim
        ins, outs = _split_shape(name, arr.shape)
        k_in = len(ins)
        a_names = (names[0], *names[1 : 1 + k_in], RANK_AXIS)
        b_names = (names[0], RANK_AXIS, *names[1 + k_in :])
        bound = 1.0 / math.sqrt(math.prod(ins))
        a_shape, b_shape = (arr.shape[0], *ins, cfg.rank), (arr.shape[0], cfg.rank, *outs)

        def make(k=jax.random.fold_in(key, i), a_shape=a_shape, b_shape=b_shape, dt=arr.dtype, bound=bound):
            return (
                jax.random.uniform(k, a_shape, jnp.float32, -bound, bound).astype(dt),
                jnp.zeros(b_shape, dt),
            )

        a, b = _placed(make, arr, a_names, b_names)
        setattr(blocks, f"{name}_lora_a", nnx.LoRAParam(a, out_sharding=a_names, eager_sharding=False))
        setattr(blocks, f"{name}_lora_b", nnx.LoRAParam(b, out_sharding=b_names, eager_sharding=False))
    blocks.lora_scale = cfg.scale


def _placed(make: Any, like: jax.Array, a_names: tuple, b_names: tuple) -> tuple[jax.Array, jax.Array]:
    """make() on like's mesh, each adapter in the sharding its logical names give (the rule table)."""
    sh = None if isinstance(like, jax.core.Tracer) else getattr(like, "sharding", None)  # eval_shape
    if not isinstance(sh, jax.sharding.NamedSharding):
        return make()
    shapes = jax.eval_shape(make)
    out = tuple(named_sharding(n, s.shape, sh.mesh) for n, s in zip((a_names, b_names), shapes, strict=True))
    return jax.jit(make, out_shardings=out)()


def delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * (x A) B for one layer: x [..., in (flat)], a [in..., r], b [r, out...] -> [..., out...]."""
    r = a.shape[-1]
    xa = x @ a.reshape(-1, r)
    out = (xa @ b.reshape(r, -1)) * jnp.asarray(scale, x.dtype)
    return out.reshape(*x.shape[:-1], *b.shape[1:])


def delta_weight(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * A B for stacked adapters a [L, in..., r], b [L, r, out...] -> [L, in..., out...], float32."""
    n, r = a.shape[0], a.shape[-1]
    a32, b32 = a.astype(jnp.float32).reshape(n, -1, r), b.astype(jnp.float32).reshape(n, r, -1)
    return (scale * (a32 @ b32)).reshape(*a.shape[:-1], *b.shape[2:])


def merged_weights(lora: nnx.State, base: nnx.State, scale: float) -> dict[tuple, jax.Array]:
    """{base path: W + scale * A B (in W's dtype)} for every adapted weight of `base`."""
    adapters = dict(nnx.to_flat_state(lora))
    out = {}
    for path, leaf in nnx.to_flat_state(base):
        a = adapters.get(path[:-1] + (f"{path[-1]}_lora_a",))
        if a is not None:
            b = adapters[path[:-1] + (f"{path[-1]}_lora_b",)]
            w = leaf[...]
            out[path] = (w.astype(jnp.float32) + delta_weight(a[...], b[...], scale)).astype(w.dtype)
    return out


def replace_weights(base: nnx.State, weights: dict[tuple, jax.Array]) -> nnx.State:
    """`base` with the leaves at the paths of `weights` replaced (the others shared, not copied)."""
    flat = [(p, leaf.replace(weights[p]) if p in weights else leaf) for p, leaf in nnx.to_flat_state(base)]
    return nnx.from_flat_state(flat)


def merge(lora: nnx.State, base: nnx.State, scale: float) -> nnx.State:
    """The base state with every adapted weight replaced by W + scale * A B: the state of the same model
    without adapters (rollout, evaluation, export)."""
    return replace_weights(base, merged_weights(lora, base, scale))


def trainable_filter(with_head: bool) -> Any:
    """The nnx filter of what a LoRA model trains: its adapters (and the discriminator's head)."""
    return nnx.Any(nnx.LoRAParam, nnx.PathContains("head")) if with_head else nnx.LoRAParam


def cast_base(base: nnx.State, dtype: Any) -> nnx.State:
    """The frozen base in `dtype` (e.g. bfloat16 to halve its memory), shardings kept."""
    return jax.tree.map(lambda x: x.astype(dtype) if x.dtype != dtype else x, base)
