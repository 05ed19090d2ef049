"""A one-token decode step over a heads-major KV cache [L, B, Hkv, S, D], for the sampler's loop.

The model's cache is [L, B, S, Hkv, D] (tokens-major, convenient for prefill). In a decode step the
attention contracts the cache over D (keys) and S (values) with batch dims (B, Hkv): in the
tokens-major layout XLA's CPU/GPU dot needs a transposed copy of each layer's cache slice every step,
which costs about as much memory traffic as reading the cache twice more. Keeping the decode cache
heads-major makes both contractions plain batched matmuls that read the cache in place.

The layer math is the model's (gadjax.models.layers: RMSNorm, rotary, GQA softmax in float32, SwiGLU),
re-assembled for T = 1; tests check it token for token against transformers and the model's forward.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from gadjax.models import layers as L
from gadjax.models.decoder import Decoder, KVCache, rope_inv_freq_for
from gadjax.parallel.rules import constrain

HEADS_MAJOR_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")


@flax.struct.dataclass
class HeadsMajorCache:
    """Keys/values [L, B, Hkv, S, D], slot mask [B, S] (1 = real token), next write index."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


def to_heads_major(cache: KVCache) -> HeadsMajorCache:
    """One transpose after prefill: [L, B, S, Hkv, D] -> [L, B, Hkv, S, D]."""
    k = constrain(jnp.swapaxes(cache.k, 2, 3), HEADS_MAJOR_AXES)
    v = constrain(jnp.swapaxes(cache.v, 2, 3), HEADS_MAJOR_AXES)
    return HeadsMajorCache(k=k, v=v, mask=cache.mask, index=cache.index)


def decode_step(
    model: Decoder, tokens: jax.Array, positions: jax.Array, cache: HeadsMajorCache
) -> tuple[jax.Array, HeadsMajorCache]:
    """Feed one token per row (tokens, positions: [B]); returns float32 logits [B, V] and the cache
    with the new keys/values written at cache.index (a single dynamic_update_slice, in place)."""
    cfg = model.config
    b = tokens.shape[0]
    nkv, g, d = cfg.num_kv_heads, cfg.num_query_groups, cfg.head_dim
    x = model.embed_tokens(tokens[:, None])  # [B, 1, h]
    cos, sin = L.rope_cos_sin(positions[:, None], rope_inv_freq_for(cfg))
    slots = jnp.arange(cache.k.shape[3])
    old_valid = cache.mask.astype(bool) & (slots[None, :] < cache.index)  # [B, S]
    scale = 1.0 / math.sqrt(d)

    def body(x: jax.Array, layer: tuple) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        p, kc, vc = layer  # kc, vc: [B, Hkv, S, D]
        dt = x.dtype
        p = {name: w.astype(dt) for name, w in p.items()}
        h = L.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
        q = jnp.einsum("btd,dnh->btnh", h, p["q"])
        k = jnp.einsum("btd,dnh->btnh", h, p["k"])
        v = jnp.einsum("btd,dnh->btnh", h, p["v"])
        if cfg.attention_bias:
            q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
        if cfg.qk_norm:
            q = L.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
            k = L.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
        q = L.apply_rope(q, cos, sin)[:, 0].reshape(b, nkv, g, d)  # [B, Hkv, G, D]
        k = L.apply_rope(k, cos, sin)[:, 0]  # [B, Hkv, D]
        v = v[:, 0]
        old = jnp.einsum("bkgd,bksd->bkgs", q, kc, preferred_element_type=jnp.float32) * scale
        old = jnp.where(old_valid[:, None, None, :], old, L.MASK_VALUE)
        new = jnp.einsum("bkgd,bkd->bkg", q, k, preferred_element_type=jnp.float32)[..., None] * scale
        probs = jax.nn.softmax(jnp.concatenate([old, new], axis=-1), axis=-1).astype(v.dtype)
        attn = jnp.einsum("bkgs,bksd->bkgd", probs[..., :-1], vc) + probs[..., -1:] * v[:, :, None, :]
        # As a plain [B, H*D] x [H*D, h] matmul: the 3-index einsum made XLA copy-transpose `o` per step.
        o = p["o"].reshape(nkv * g * d, -1)
        x = x + (attn.reshape(b, nkv * g * d) @ o)[:, None]
        h = L.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
        x = x + L.swiglu(h, p["gate"], p["up"], p["down"])
        return x, (k, v)

    x, (k_new, v_new) = jax.lax.scan(body, x, (model.blocks.arrays(), cache.k, cache.v))
    x = L.rms_norm(x, model.final_norm[...], cfg.rms_norm_eps)
    logits = model.logits(x)[:, 0]
    idx = cache.index
    at = (0, 0, 0, idx, 0)
    cache = HeadsMajorCache(
        k=jax.lax.dynamic_update_slice(cache.k, k_new[:, :, :, None, :].astype(cache.k.dtype), at),
        v=jax.lax.dynamic_update_slice(cache.v, v_new[:, :, :, None, :].astype(cache.v.dtype), at),
        mask=jax.lax.dynamic_update_slice(cache.mask, jnp.ones((b, 1), cache.mask.dtype), (0, idx)),
        index=idx + 1,
    )
    return logits, cache
