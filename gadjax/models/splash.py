"""TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention) for the decoder's new tokens.

The kernel takes one sequence, q [H, T, D] and k, v [Hkv, T, D] (grouped-query natively), a static
causal mask, and segment ids: real tokens are segment 1 and padding segment 0, so a real query never
sees a padding key, and a padding query sees padding keys (at least itself: no empty softmax row).
It is vmapped over the batch. T is padded up to a multiple of the block size; the kernel does not
scale q, so q is scaled by 1/sqrt(D) here. Pallas kernels are not partitioned by GSPMD: under an
active mesh (gadjax.parallel.rules.use_mesh) the call is a shard_map with batch over the batch axes
and heads over the head axis (when both q and kv heads divide it), as MaxText does.

Numerics differ from the xla path only on queries that see no real key (padding), which are masked out
of every loss. `interpret=True` runs the kernel in Pallas interpret mode (CPU tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from gadjax.parallel.rules import active_mesh, named_sharding

LANES = 128  # the kernel's key blocks must be multiples of the TPU lane width
MAX_BLOCK = 512


def block_for(t: int) -> int:
    """Block size for sequence length t: 512, or t rounded up to the lane width when shorter."""
    return min(MAX_BLOCK, -(-t // LANES) * LANES)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    *,
    interpret: bool = False,
    segments: jax.Array | None = None,
) -> jax.Array:
    """Causal GQA over the new tokens: q [B,T,H,D], k, v [B,T,Hkv,D], key_valid [B,T] -> [B,T,H,D].

    `segments` [B,T] (packed rows: 0 = padding, k = the k-th row) are the kernel's segment ids as given;
    without them, real tokens are segment 1 and padding 0."""
    t = q.shape[1]
    blk = block_for(t)
    pad = -t % blk
    seg = (key_valid if segments is None else segments).astype(jnp.int32)
    if pad:  # padded tail: segment 0, after every real query, sliced off below
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        seg = jnp.pad(seg, ((0, 0), (0, pad)))
    run = lambda q, k, v, seg: _local(q, k, v, seg, blk, interpret)  # noqa: E731
    active = active_mesh()
    if active is not None:
        mesh, rules = active
        # One head axis for q and kv heads (or none), so a local q head still maps to its kv group.
        kv_spec = named_sharding(("batch", "length", "act_heads", "head_dim"), k.shape, mesh, rules).spec
        q_spec = named_sharding(("batch", "length", "act_heads", "head_dim"), q.shape, mesh, rules).spec
        spec = kv_spec if q_spec[2] == kv_spec[2] else PartitionSpec(kv_spec[0], None, None, None)
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(spec, spec, spec, PartitionSpec(spec[0], None)),
            out_specs=spec,
            check_vma=False,
        )
    return run(q, k, v, seg)[:, :t]


def _local(q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array, blk: int, interpret: bool) -> jax.Array:
    """The kernel on one device's shard: [B,T,H,D] q, [B,T,Hkv,D] k / v, [B,T] segment ids."""
    t, h, d = q.shape[1:]
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
    sizes = sk.BlockSizes(
        block_q=blk,
        block_kv=blk,
        block_kv_compute=blk,
        block_q_dkv=blk,
        block_kv_dkv=blk,
        block_kv_dkv_compute=blk,
        block_q_dq=blk,
        block_kv_dq=blk,
    )
    kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B,T,N,D] -> [B,N,T,D]
    qs = heads_major(q * jnp.asarray(1.0 / d**0.5, q.dtype))
    one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))  # noqa: E731
    out = jax.vmap(one)(qs, heads_major(k), heads_major(v), seg)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
