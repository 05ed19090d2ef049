"""The decode step in a layout built for one-token steps on CPU: unrolled layers, fused transposed weights.

Why a second layout: the model's own forward scans stacked [layers, ...] parameters. On the XLA CPU
backend every scan iteration copies its layer's weight slice out of the stacked array before the
matmul, so a one-token decode step moved the weights twice (measured on the SmolLM2-135M shape at
16 rows: 88 ms per step scanned vs 41 ms with the layers unrolled over per-layer arrays). Prefill
(thousands of tokens per weight read) does not care, so it keeps the scanned model; the decode loop
uses this module:

- `decode_weights` slices the stacked parameters ONCE per rollout (outside the decode loop) into
  per-layer arrays, fusing q|k|v and gate|up into one matrix each and storing every matrix as
  [out, in] (PyTorch's nn.Linear layout);
- activations are feature-major [features, rows], so every projection is W[out, in] @ x[in, rows]:
  the form XLA's CPU GEMM ran fastest at 16 rows (110 vs 103 GFLOP/s for x @ W on the 3072 x 576
  MLP matrices; 133 vs 91 on one 538 MB matrix);
- the RMSNorm scales are folded into the projections that follow them (see decode_weights), and the
  LM head runs as row blocks (see _head_logits);
- the KV cache is a tuple of per-layer arrays in the loop carry, keys as [rows, kv_heads, head_dim, S]
  and values as [rows, kv_heads, S, head_dim], so both attention products contract a contiguous
  axis (7.4 vs 11.3 ms per step for the 30 layers of SmolLM2 at 16 rows x 128 slots); the new
  key/value is written first (in place) and the query attends over the whole cache under a mask, so
  nothing reads the old cache after the write and XLA never copies it.

The maths is the model's (layers.py): RMSNorm and softmax in float32, HF's rotate-half rotary
embedding, grouped-query attention without repeating keys. tests/rollout/test_unrolled.py checks it
against the scanned model step for step on Llama, Qwen2 (biases) and Qwen3 (q/k norm) shapes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from gadjax.models import layers as L
from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder, KVCache, rope_inv_freq_for

HEAD_CHUNK_ROWS = 16384  # rows per block of the output projection (see _head_logits)


@flax.struct.dataclass
class LayerCaches:
    """Per-layer KV cache: k[l] [rows, Hkv, D, S] (keys transposed), v[l] [rows, Hkv, S, D]; slot mask
    [rows, S]; next write index."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array


def unstack_cache(cache: KVCache) -> LayerCaches:
    """Split a stacked [L, ...] KVCache into per-layer arrays (one copy, before the decode loop)."""
    n = cache.k.shape[0]
    return LayerCaches(
        k=tuple(jnp.swapaxes(cache.k[i], 2, 3) for i in range(n)),
        v=tuple(cache.v[i] for i in range(n)),
        mask=cache.mask,
        index=cache.index,
    )


def decode_weights(model: Decoder) -> dict[str, Any]:
    """Per-layer, fused, [out, in] weights in the model's compute dtype (see the module doc).

    The RMSNorm scales are folded into the input columns of the projection that follows each norm
    (W @ (g * x * r) = ((W * g) @ x) * r), so a norm costs its statistics r only and the scaling by r
    fuses into the projection's consumers: one elementwise pass per norm less. The rounding differs
    from the scanned model by float32 epsilon (tests/rollout/test_unrolled.py bounds it).

    Returns {"layers": [per-layer dict], "head": row blocks of the [vocab, h] output projection (final
    norm folded in), "embed": [vocab, h]}.
    """
    cfg, dt = model.config, model.dtype
    h, d, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    stacked = model.blocks.arrays()
    if any(name.endswith("_lora_a") for name in stacked):  # the fused weights would drop the adapters
        raise ValueError("decode_weights: the model has LoRA adapters; merge them first (gadjax.models.lora)")
    layers = []
    for i in range(cfg.num_layers):
        p = {name: arr[i] for name, arr in stacked.items()}  # parameter dtype (f32 master weights)
        qkv = jnp.concatenate(
            [p["q"].reshape(h, nh * d), p["k"].reshape(h, nkv * d), p["v"].reshape(h, nkv * d)], axis=1
        )
        gate_up = jnp.concatenate([p["gate"], p["up"]], axis=1)
        w = {
            "qkv": (qkv * p["attn_norm"][:, None]).T.astype(dt),
            "o": p["o"].reshape(nh * d, h).T.astype(dt),
            "gate_up": (gate_up * p["mlp_norm"][:, None]).T.astype(dt),
            "down": p["down"].T.astype(dt),
        }
        if cfg.attention_bias:
            w["qkv_bias"] = jnp.concatenate(
                [p["q_bias"].reshape(-1), p["k_bias"].reshape(-1), p["v_bias"].reshape(-1)]
            )[:, None].astype(dt)
        if cfg.qk_norm:  # one [heads + kv_heads, D, 1] scale, so queries and keys normalise in one op
            per_head = [jnp.tile(p["q_norm"][None], (nh, 1)), jnp.tile(p["k_norm"][None], (nkv, 1))]
            w["qk_norm"] = jnp.concatenate(per_head)[:, :, None].astype(dt)
        layers.append(w)
    head = model.lm_head[...].T if model.has_lm_head else model.embed[...]
    head = (head * model.final_norm[...][None, :]).astype(dt)
    return {
        "layers": layers,
        # Row blocks of the [vocab, hidden] head, sliced here once (slicing inside the loop copied them
        # on every step); see _head_logits.
        "head": tuple(head[i : i + HEAD_CHUNK_ROWS] for i in range(0, head.shape[0], HEAD_CHUNK_ROWS)),
        "embed": model.embed[...],
    }


def _normed(x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of feature-major x [hidden, rows] without its scale (folded into the next projection)."""
    return x * L.inv_rms(x, eps, axis=0).astype(x.dtype)


def _normed_project(w: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """w' @ rms_norm(x) for a w' with the norm's scale folded in (see decode_weights): the per-row
    statistics scale the product, so they fuse into its consumers."""
    return (w @ x) * L.inv_rms(x, eps, axis=0).astype(x.dtype)


def _layer(
    x: jax.Array,
    w: dict[str, jax.Array],
    cfg: ModelConfig,
    cos: jax.Array,
    sin: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    index: jax.Array,
    visible: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One transformer layer on feature-major x [hidden, rows]; returns x and the updated k, v caches."""
    rows = x.shape[1]
    d, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    eps = cfg.rms_norm_eps
    qkv = _normed_project(w["qkv"], x, eps)
    if cfg.attention_bias:
        qkv = qkv + w["qkv_bias"]
    qk = qkv[: (nh + nkv) * d].reshape(nh + nkv, d, rows)
    v = qkv[(nh + nkv) * d :].reshape(nkv, d, rows)
    if cfg.qk_norm:
        qk = L.rms_norm(qk, w["qk_norm"], eps, axis=1)
    qk = L.rotate(qk, cos, sin, axis=1)  # queries and keys rotate alike: one op for both
    q, k = qk[:nh], qk[nh:]

    # Write first, then attend over the whole cache: the old cache is never read after the write.
    new_k = jnp.transpose(k, (2, 0, 1))[..., None].astype(k_cache.dtype)  # [rows, Hkv, D, 1]
    new_v = jnp.transpose(v, (2, 0, 1))[:, :, None].astype(v_cache.dtype)  # [rows, Hkv, 1, D]
    k_cache = jax.lax.dynamic_update_slice(k_cache, new_k, (0, 0, 0, index))
    v_cache = jax.lax.dynamic_update_slice(v_cache, new_v, (0, 0, index, 0))
    qg = jnp.transpose(q, (2, 0, 1)).reshape(rows, nkv, nh // nkv, d)
    scores = jnp.einsum("bkgd,bkds->bkgs", qg, k_cache.astype(qg.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(visible[:, None, None, :], scores * (1.0 / math.sqrt(d)), L.MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    attn = jnp.einsum("bkgs,bksd->bkgd", probs, v_cache.astype(x.dtype)).reshape(rows, nh * d)
    x = x + w["o"] @ attn.T

    gate_up = _normed_project(w["gate_up"], x, eps)
    m = cfg.intermediate_size
    x = x + w["down"] @ (jax.nn.silu(gate_up[:m]) * gate_up[m:])
    return x, k_cache, v_cache


def _head_logits(head: tuple[jax.Array, ...], x: jax.Array) -> jax.Array:
    """float32 logits [rows, vocab] = (head [vocab, hidden] @ x [hidden, rows]).T, by row blocks.

    One [49152, 576] x [576, 16] product ran at 53 GFLOP/s on XLA's CPU backend; the same product as
    three [16384, 576] ones at 127 GFLOP/s (17.9 vs 7.1 ms per step for the SmolLM2 head).
    """
    parts = [jnp.matmul(block, x, preferred_element_type=jnp.float32) for block in head]
    return jnp.concatenate(parts, axis=0).T


def decode_step(
    weights: dict[str, Any],
    cfg: ModelConfig,
    cache: LayerCaches,
    tokens: jax.Array,
    positions: jax.Array,
    *,
    by_mask_only: bool = False,
) -> tuple[jax.Array, LayerCaches]:
    """Feed one token per row (tokens, positions [rows]); float32 logits [rows, vocab] and the new cache.

    Same semantics as `Decoder.__call__(tokens[:, None], positions[:, None], ones, cache)` followed
    by `Decoder.logits`: the token is written at cache.index and attends to every valid cached slot.
    by_mask_only: attend to every slot the mask marks, also those after the index (the circular slot
    caches of gadjax.rollout.continuous, where a row's prompt can sit after the column being written).
    """
    dt = weights["head"][0].dtype
    x = jnp.take(weights["embed"], tokens, axis=0).astype(dt).T  # [hidden, rows]
    inv_freq = rope_inv_freq_for(cfg)
    freqs = inv_freq[:, None] * positions.astype(jnp.float32)[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=0)  # [D, rows]
    cos, sin = jnp.cos(angles), jnp.sin(angles)

    index = cache.index
    new_slot = jnp.ones((tokens.shape[0], 1), cache.mask.dtype)
    mask = jax.lax.dynamic_update_slice(cache.mask, new_slot, (0, index))
    slots = jnp.arange(mask.shape[1])
    visible = mask.astype(bool) if by_mask_only else mask.astype(bool) & (slots <= index)[None, :]
    ks, vs = [], []
    for w, k_cache, v_cache in zip(weights["layers"], cache.k, cache.v, strict=True):
        x, k_cache, v_cache = _layer(x, w, cfg, cos, sin, k_cache, v_cache, index, visible)
        ks.append(k_cache)
        vs.append(v_cache)
    logits = _head_logits(weights["head"], _normed(x, cfg.rms_norm_eps))
    return logits, LayerCaches(k=tuple(ks), v=tuple(vs), mask=mask, index=index + 1)
