"""Flash-style attention in plain XLA: online softmax over key blocks, never a [T, T] score matrix.

Causal grouped-query attention over the new tokens, with a key-validity mask (left / right padding),
as `layers.attention` computes it, but in blocks of `block` queries x `block` keys: each query block
visits only the key blocks at or before it (causal block skipping, about half the FLOPs of the dense
path), keeping a running max / sum per query (Milakov & Gimelshein 2018; Dao et al. 2022). A custom
VJP recomputes the block scores in the backward from the saved log-sum-exp, so neither pass holds
more than one [B, Hkv, G, block, block] score block per step.

Keys already in a KV cache are attended densely (their scores are [T, S]: one row per decode step)
straight from the heads-major cache, and merged with the new tokens' result through the two
log-sum-exps: the cache is read in place, as in `layers.attention`.

Packed rows (`segments` [B,T]: 0 = padding, k = the k-th row of the sequence): a query also needs its
key's segment to be its own, checked per block like the causal mask (no attention across rows).

Equality with `layers.attention`: same masks, same MASK_VALUE, float32 scores. A query that sees no
key at all (a left-padding position) gets a uniform average over the key blocks it visits rather
than over all keys; such positions are masked out of every loss, and their cotangents are zero.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from gadjax.models.layers import MASK_VALUE, _scores

DEFAULT_BLOCK = 512


@partial(jax.jit, static_argnames="block")
def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    cached: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    block: int = DEFAULT_BLOCK,
    segments: jax.Array | None = None,
) -> jax.Array:
    """Causal GQA; q [B,T,H,D], k, v [B,T,Hkv,D], key_valid [B,T] (True = a real token).

    `cached` = (k_cache [B,Hkv,S,D], v_cache, cache_mask [B,T,S]) as in `layers.attention`; `segments`
    [B,T] int for packed rows (None: one row per sequence). Returns [B,T,H,D] in q's dtype.
    """
    b, t, h, d = q.shape
    num_kv = k.shape[2]
    seg = jnp.zeros((b, t), jnp.int32) if segments is None else segments.astype(jnp.int32)
    out, lse = _blocked(q, k, v, key_valid, seg, min(block, t))  # [B,T,H,D] in q's dtype, [B,Hkv,G,T] f32
    if cached is not None:
        k_cache, v_cache, cache_mask = cached
        old = jnp.where(cache_mask[:, None, None], _scores(q, k_cache, num_kv, heads_major=True), MASK_VALUE)
        lse_old = jax.nn.logsumexp(old, axis=-1)
        probs = jnp.exp(old - lse_old[..., None]).astype(v.dtype)
        out_old = jnp.einsum("bkgts,bksd->btkgd", probs, v_cache, preferred_element_type=jnp.float32)
        both = jnp.logaddexp(lse_old, lse)
        # [B,Hkv,G,T] weights -> [B,T,Hkv,G,1] to scale the [B,T,Hkv,G,D] outputs.
        w_old = jnp.moveaxis(jnp.exp(lse_old - both), 3, 1)[..., None]
        w_new = jnp.moveaxis(jnp.exp(lse - both), 3, 1)[..., None]
        out = w_old * out_old + w_new * out.reshape(b, t, num_kv, h // num_kv, d)
    return out.reshape(b, t, h, d).astype(q.dtype)


def _blocked(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, seg: jax.Array, block: int
) -> tuple[jax.Array, jax.Array]:
    """Pad T to a multiple of `block`, cut into blocks, run the kernel; returns out [B,T,H,D] (q's dtype)
    and the log-sum-exp [B,Hkv,G,T]."""
    b, t, h, d = q.shape
    num_kv = k.shape[2]
    g = h // num_kv
    pad = -t % block
    if pad:  # padded keys are invalid and come after every real query: causally invisible
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))
        seg = jnp.pad(seg, ((0, 0), (0, pad)))
    n = (t + pad) // block
    qb = q.reshape(b, n, block, num_kv, g, d).transpose(1, 0, 3, 4, 2, 5)  # [n,B,Hkv,G,blk,D]
    kb = k.reshape(b, n, block, num_kv, d).transpose(1, 0, 3, 2, 4)  # [n,B,Hkv,blk,D]
    vb = v.reshape(b, n, block, num_kv, d).transpose(1, 0, 3, 2, 4)
    validb = key_valid.astype(bool).reshape(b, n, block).transpose(1, 0, 2)  # [n,B,blk]
    segb = seg.reshape(b, n, block).transpose(1, 0, 2)  # [n,B,blk]
    out, lse = _flash(qb, kb, vb, validb, segb)
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * block, h, d)[:, :t]
    lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, num_kv, g, n * block)[..., :t]
    return out, lse


def _block_scores(
    q_i: jax.Array,
    k_j: jax.Array,
    valid_j: jax.Array,
    i: jax.Array,
    j: jax.Array,
    seg_i: jax.Array,
    seg_j: jax.Array,
) -> tuple:
    """Masked float32 scores of query block i against key block j, and the mask [B,1,1,blk,blk]."""
    blk, d = q_i.shape[-2:]
    s = jnp.einsum("bkgqd,bksd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(d))
    pos = jnp.arange(blk)
    causal = (i * blk + pos)[:, None] >= (j * blk + pos)[None, :]
    mask = causal[None, None, None] & valid_j[:, None, None, None, :]
    mask = mask & (seg_i[:, None, None, :, None] == seg_j[:, None, None, None, :])  # packed rows
    return jnp.where(mask, s, MASK_VALUE), mask


@jax.custom_vjp
def _flash(
    qb: jax.Array, kb: jax.Array, vb: jax.Array, validb: jax.Array, segb: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Blocked causal attention: out [n,B,Hkv,G,blk,D] in q's dtype (so is the saved residual), lse
    [n,B,Hkv,G,blk] float32."""
    return _forward(qb, kb, vb, validb, segb)


def _forward(qb, kb, vb, validb, segb):
    def query_block(i):
        q_i = qb[i]

        def step(j, carry):
            m, denom, acc = carry
            s, _ = _block_scores(q_i, kb[j], validb[j], i, j, segb[i], segb[j])
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            alpha = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bkgqs,bksd->bkgqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32
            )
            return m_new, alpha * denom + p.sum(-1), alpha[..., None] * acc + pv

        m0 = jnp.full(q_i.shape[:-1], -jnp.inf, jnp.float32)
        init = (m0, jnp.zeros_like(m0), jnp.zeros(q_i.shape, jnp.float32))
        m, denom, acc = jax.lax.fori_loop(0, i + 1, step, init)  # causal: key blocks 0..i only
        return (acc / denom[..., None]).astype(qb.dtype), m + jnp.log(denom)

    return jax.lax.map(query_block, jnp.arange(qb.shape[0]))


def _flash_fwd(qb, kb, vb, validb, segb):
    out, lse = _forward(qb, kb, vb, validb, segb)
    return (out, lse), (qb, kb, vb, validb, segb, out, lse)


def _flash_bwd(res, cotangents):
    qb, kb, vb, validb, segb, out, lse = res
    dout, dlse = cotangents
    n, d = qb.shape[0], qb.shape[-1]
    # d lse / d s = p, so a cotangent on lse shifts the row term: ds = p (dp - (delta - dlse)).
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - dlse
    dout = dout.astype(vb.dtype)

    def key_block(dq, j):
        k_j, v_j, valid_j = kb[j], vb[j], validb[j]

        def step(i, carry):
            dk, dv, dq = carry
            q_i = qb[i]
            s, mask = _block_scores(q_i, k_j, valid_j, i, j, segb[i], segb[j])
            p = jnp.exp(s - lse[i][..., None])
            dv = dv + jnp.einsum(
                "bkgqs,bkgqd->bksd", p.astype(vb.dtype), dout[i], preferred_element_type=jnp.float32
            )
            dp = jnp.einsum("bkgqd,bksd->bkgqs", dout[i], v_j, preferred_element_type=jnp.float32)
            # Masked scores are constants in the dense path: no gradient reaches q or k through them.
            ds = jnp.where(mask, p * (dp - delta[i][..., None]), 0.0) * (1.0 / math.sqrt(d))
            ds = ds.astype(qb.dtype)
            dq_i = jnp.einsum("bkgqs,bksd->bkgqd", ds, k_j, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds, q_i, preferred_element_type=jnp.float32)
            return dk, dv, dq.at[i].add(dq_i)

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        dk, dv, dq = jax.lax.fori_loop(j, n, step, (zeros, zeros, dq))  # causal: query blocks j..n-1
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(qb.shape, jnp.float32), jnp.arange(n))
    return dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
