"""One attention function, several backends: the decoder calls `attend`; `model.attention` picks.

| backend | where | what |
|---|---|---|
| xla | everywhere | `layers.attention`: the einsum path with float32 [B, H, T, S] scores (the reference) |
| flash | everywhere | `flash.attention`: online softmax over key blocks in plain XLA, custom VJP; no [T, T] |
| splash | TPU | `splash.attention`: jax's Pallas splash-attention kernel (train steps, log-probs, prefill) |
| cudnn | GPU | `jax.nn.dot_product_attention(implementation="cudnn")`, bf16 / fp16 |

`auto` resolves by platform: TPU -> splash, GPU -> cudnn when the compute dtype is bf16 / fp16 (else
xla: cuDNN's fused attention has no float32 kernel), CPU -> xla, so CPU numerics stay those of the
reference path (bench/attention.py measures when flash pays on CPU). splash and cudnn attend over the
new tokens only; a call that also reads a KV cache (decode) takes the xla path, which reads the
cache in place.

Packing (several rows in one sequence, gadjax.data.packing): `segments` [B,T] int (0 = padding, k > 0 =
the k-th row of the sequence) keeps each query on its own row's keys. Every backend takes it: xla and
cudnn through the dense mask, flash per block, splash as the kernel's own segment ids.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gadjax.models import flash
from gadjax.models import layers as L

BACKENDS = ("auto", "xla", "flash", "splash", "cudnn")
# Backends that consume the dense [B, T, T] boolean mask (the others build their masks per block).
DENSE_MASK = ("xla", "cudnn")
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def resolve(name: str, platform: str | None = None, dtype: Any = jnp.float32) -> str:
    """The concrete backend for `name` on `platform` (default: jax's default backend) and compute dtype.

    Raises ValueError naming the choices for an unknown name, or the platform for a backend that
    cannot run on it (splash off TPU, cudnn off GPU)."""
    if name not in BACKENDS:
        raise ValueError(f"model.attention={name!r}: expected one of {BACKENDS}")
    platform = platform or jax.default_backend()
    half = jnp.dtype(dtype) in _HALF
    if name == "auto":
        return {"tpu": "splash", "gpu": "cudnn" if half else "xla"}.get(platform, "xla")
    if name == "splash" and platform != "tpu":
        raise ValueError(
            f"model.attention='splash' needs a TPU (this program targets {platform!r}); use 'flash'"
        )
    if name == "cudnn":
        if platform != "gpu":
            raise ValueError(
                f"model.attention='cudnn' needs a GPU (this program targets {platform!r}); use 'flash'"
            )
        if not half:
            raise ValueError(
                f"model.attention='cudnn' needs model.dtype bfloat16 (got {jnp.dtype(dtype).name})"
            )
    return name


def attend(
    backend: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    mask: jax.Array | None,
    cached: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    segments: jax.Array | None = None,
) -> jax.Array:
    """Causal GQA over the new tokens (+ an optional KV cache) with a resolved `backend`.

    q [B,T,H,D]; k, v [B,T,Hkv,D]; key_valid [B,T] (True = a real token); `mask` is the dense causal
    mask [B,T,T] (= causal & key_valid [& same segment]), needed by the DENSE_MASK backends only; `cached`
    as in `layers.attention`; `segments` [B,T] (packed rows, see the module doc) or None.
    Returns [B,T,H,D] in q's dtype.
    """
    if segments is not None and cached is not None:
        raise ValueError("attend: packed segments with a KV cache (decode never packs rows)")
    if backend == "flash":
        return flash.attention(q, k, v, key_valid, cached, segments=segments)
    if backend == "xla" or cached is not None:
        if mask is None:
            mask = causal_mask(key_valid, segments)
        return L.attention(q, k, v, mask, cached)
    if backend == "splash":
        from gadjax.models import splash

        return splash.attention(q, k, v, key_valid, segments=segments)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, mask if mask is not None else causal_mask(key_valid, segments))
    raise ValueError(f"attention backend {backend!r} is not resolved (expected one of {BACKENDS[1:]})")


def causal_mask(key_valid: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """[B,T,T] bool: query i sees key j <= i when j is a real token (and, packed, of i's segment)."""
    t = key_valid.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = causal[None] & key_valid.astype(bool)[:, None, :]
    if segments is not None:
        mask = mask & (segments[:, :, None] == segments[:, None, :])
    return mask


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """cuDNN fused attention (bf16 / fp16 inputs: `resolve` checks the dtype). Left padding is not a
    sequence length, so the dense causal mask goes in as a [B,1,T,T] mask (cuDNN turns it into a bias)."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
