"""Pure building blocks of the decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

They take raw arrays (not modules) so the decoder can scan them over stacked layer parameters.
Numerics follow Hugging Face's Llama / Qwen PyTorch code: norms and softmax in float32, rotary
frequencies in float32, the "rotate_half" (non-interleaved) rotary layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# Scores of masked keys. Finite, so a query that sees no key at all (a left-padding position) gets a
# uniform softmax instead of NaN; such positions are masked out of every loss.
MASK_VALUE = -1e30


def inv_rms(x: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """1 / sqrt(mean(x^2) + eps) over `axis` (kept), in float32: RMSNorm's statistics."""
    x32 = x.astype(jnp.float32)
    return jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """RMSNorm (Zhang & Sennrich 2019) over `axis`, computed in float32, cast back to x's dtype before
    the scale. `weight` must broadcast against x (the feature vector when axis is the last one)."""
    normed = x.astype(jnp.float32) * inv_rms(x, eps, axis)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> jax.Array:
    """Inverse rotary frequencies, with the 'linear' and Llama-3 frequency scalings."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {kind!r}")


def rope_cos_sin(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] for integer positions [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, N, D] by the rotary angles cos, sin [B, T, D] (HF's rotate_half layout)."""
    return rotate(x, cos[:, :, None, :], sin[:, :, None, :], axis=-1)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array, axis: int) -> jax.Array:
    """The rotary rotation along `axis` (head_dim), in float32; cos and sin broadcast against x."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=axis)
    rotated = jnp.concatenate([-second, first], axis=axis)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def _scores(q: jax.Array, k: jax.Array, num_kv: int, heads_major: bool = False) -> jax.Array:
    """q [B,T,H,D] . k [B,S,Hkv,D] (or heads-major [B,Hkv,S,D]) -> scaled scores [B,Hkv,G,T,S], float32.

    GQA without repeating k: the H query heads are grouped as [Hkv, G]."""
    b, t, h, d = q.shape
    qg = q.reshape(b, t, num_kv, h // num_kv, d)
    eq = "btkgd,bksd->bkgts" if heads_major else "btkgd,bskd->bkgts"
    s = jnp.einsum(eq, qg, k, preferred_element_type=jnp.float32)
    return s * (1.0 / math.sqrt(d))


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    cached: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Grouped-query attention: the `xla` backend and the reference the others are tested against
    (gadjax.models.attention picks the backend).

    q [B,T,H,D]; k, v [B,T,Hkv,D] are the new tokens, `mask` [B,T,T] says which new keys each query
    sees. `cached` = (k_cache [B,Hkv,S,D], v_cache, cache_mask [B,T,S]) adds keys already in a KV
    cache; their scores are concatenated with the new ones so the cache is read, never copied. The
    cache is heads-major so both contractions (over D for keys, over S for values) are plain batched
    matmuls over (B, Hkv) that read it in place: a tokens-major cache made XLA copy-transpose every
    layer's slice on every decode step.
    Returns [B,T,H,D] in q's dtype.
    """
    b, t, h, d = q.shape
    num_kv = k.shape[2]
    scores = jnp.where(mask[:, None, None], _scores(q, k, num_kv), MASK_VALUE)
    if cached is not None:
        k_cache, v_cache, cache_mask = cached
        old = jnp.where(cache_mask[:, None, None], _scores(q, k_cache, num_kv, heads_major=True), MASK_VALUE)
        scores = jnp.concatenate([old, scores], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if cached is not None:
        s = cached[0].shape[2]
        out = jnp.einsum("bkgts,bksd->btkgd", probs[..., :s], cached[1]) + jnp.einsum(
            "bkgts,bskd->btkgd", probs[..., s:], v
        )
    else:
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def _einsum_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., K] @ w [K, out...] -> [..., out...] as one einsum (no reshapes: shardings pass through)."""
    o = "abcdefgh"[: w.ndim - 1]
    return jnp.einsum(f"...k,k{o}->...{o}", x, w)


@jax.custom_vjp
def _dense_materialized_grad(x: jax.Array, w: jax.Array) -> jax.Array:
    return _einsum_dense(x, w)


def _dense_fwd(x: jax.Array, w: jax.Array):
    return _einsum_dense(x, w), (x, w)


def _dense_bwd(res, dy: jax.Array):
    x, w = res
    k = x.shape[-1]
    x2, w2 = x.reshape(-1, k), w.reshape(k, -1)
    # The barrier makes XLA write dy in its natural layout. Without it, XLA:CPU fuses dy's elementwise
    # producer (SiLU's derivative, the residual adds) into the transposed copy that the weight-gradient
    # matmul wants, a strided loop ~30x slower per element than a plain tiled transpose (bench/
    # train_step.py --breakdown: the backbone's forward + backward went from 3.86x to 3.35x its forward).
    dy2 = jax.lax.optimization_barrier(dy.reshape(-1, w2.shape[1]))
    return (dy2 @ w2.T).reshape(x.shape), (x2.T @ dy2).reshape(w.shape)


_dense_materialized_grad.defvjp(_dense_fwd, _dense_bwd)


def dense(x: jax.Array, w: jax.Array, *, materialize_grads: bool = False) -> jax.Array:
    """x [..., K] @ w [K, out...] -> [..., out...]: a projection of the decoder layer.

    materialize_grads=True (gadjax's CPU default) has the same forward and a custom VJP that
    materializes the output gradient before the two backward matmuls (see _dense_bwd); the gradients
    are the same matmuls. False leaves the backward to autodiff, which accelerator compilers fuse best."""
    if w.shape[0] != x.shape[-1]:
        raise ValueError(f"dense: x {x.shape} and w {w.shape} do not contract (last dim vs first)")
    return _dense_materialized_grad(x, w) if materialize_grads else _einsum_dense(x, w)


def swiglu(x: jax.Array, project: Callable[[jax.Array, str], jax.Array]) -> jax.Array:
    """SwiGLU MLP (Shazeer 2020): down(silu(x gate) * (x up)); `project(x, name)` applies the weight
    `name` (the decoder's projection: `dense`, plus a LoRA delta where adapted)."""
    return project(jax.nn.silu(project(x, "gate")) * project(x, "up"), "down")
