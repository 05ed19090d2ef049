"""Attention backends against the reference einsum path (layers.attention): forward and gradients.

Random float32 inputs with left padding, GQA 7:1 and 1:1, causal masks and a KV cache. Queries that see
no real key (left-padding positions) are compared out: every loss masks them (see gadjax/models/flash.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadjax.models import attention as A
from gadjax.models import flash
from gadjax.models import layers as L

HEADS = [(7, 1), (3, 3)]  # (query heads, kv heads): GQA 7:1 and plain multi-head 1:1


def _inputs(heads: int, kv: int, lengths: list[int], t: int, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    valid = np.zeros((b, t), bool)
    for i, n in enumerate(lengths):
        valid[i, t - n :] = True  # left padding
    return q, k, v, jnp.asarray(valid)


@jax.jit
def _reference(q, k, v, valid, cached=None):
    return L.attention(q, k, v, A.causal_mask(valid), cached)


def _grads(fn, q, k, v, valid, weight):
    """Gradients of sum(out * weight) over real query positions (as every loss masks padding); jitted:
    one compile instead of an op-by-op dispatch of the block loops."""
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * weight * valid[:, :, None, None])
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _close(a, b, valid, tol):
    a, b = np.asarray(a), np.asarray(b)
    assert np.isfinite(a).all()
    err = np.abs(a - b)[np.asarray(valid)].max()
    assert err <= tol, err


@pytest.mark.parametrize("heads,kv", HEADS)
@pytest.mark.parametrize("t,block", [(13, 4), (16, 16), (9, 512)])  # padded last block, one block, T < block
def test_flash_equals_reference_forward_and_grads(heads, kv, t, block):
    q, k, v, valid = _inputs(heads, kv, [t, 5, 9, 1], t)
    ref = _reference(q, k, v, valid)
    out = flash.attention(q, k, v, valid, block=block)
    _close(out, ref, valid, 1e-5)

    weight = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    g_ref = _grads(lambda q, k, v: _reference(q, k, v, valid), q, k, v, valid, weight)
    g_out = _grads(lambda q, k, v: flash.attention(q, k, v, valid, block=block), q, k, v, valid, weight)
    for name, a, b in zip("qkv", g_out, g_ref, strict=True):
        # dq of padding queries is zero (their cotangent is); dk / dv of padding keys are zero too.
        err = np.abs(np.asarray(a) - np.asarray(b)).max()
        assert err <= 1e-4, (name, err)
    assert np.abs(np.asarray(g_ref[1])).max() > 1e-2  # the comparison is not between zeros


@pytest.mark.parametrize("heads,kv", HEADS)
@pytest.mark.parametrize("t", [1, 3])  # a decode step, and a few tokens appended to a cache
def test_flash_with_kv_cache_equals_reference(heads, kv, t):
    b, s, d = 3, 10, 8
    q, k, v, valid = _inputs(heads, kv, [t, t, 1], t, d, seed=2)
    rng = np.random.default_rng(3)
    k_cache = jnp.asarray(rng.normal(size=(b, kv, s, d)), jnp.float32)
    v_cache = jnp.asarray(rng.normal(size=(b, kv, s, d)), jnp.float32)
    slots = np.ones((b, s), bool)
    slots[0, :4] = False  # left padding in the cached prompt
    slots[1, 7:] = False  # slots not written yet
    slots[2, :] = False  # a row whose cache is empty
    cache_mask = jnp.broadcast_to(jnp.asarray(slots)[:, None, :], (b, t, s))
    cached = (k_cache, v_cache, cache_mask)
    ref = _reference(q, k, v, valid, cached)
    out = flash.attention(q, k, v, valid, cached, block=2)
    _close(out, ref, valid, 1e-5)

    weight = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    g_ref = _grads(lambda q, k, v: _reference(q, k, v, valid, cached), q, k, v, valid, weight)
    g_out = _grads(lambda q, k, v: flash.attention(q, k, v, valid, cached, block=2), q, k, v, valid, weight)
    for a, b_ in zip(g_out, g_ref, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b_)).max() <= 1e-4


def test_flash_bfloat16_close_to_reference():
    q, k, v, valid = _inputs(4, 2, [16, 7], 16)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ref = _reference(q, k, v, valid).astype(jnp.float32)
    out = flash.attention(q, k, v, valid, block=8)
    assert out.dtype == jnp.bfloat16
    _close(out.astype(jnp.float32), ref, valid, 3e-2)


def test_attend_dispatch_xla_is_the_reference_bitwise_and_flash_close():
    q, k, v, valid = _inputs(7, 1, [12, 4], 12)
    mask = A.causal_mask(valid)
    np.testing.assert_array_equal(
        np.asarray(A.attend("xla", q, k, v, valid, mask)), np.asarray(L.attention(q, k, v, mask))
    )
    # xla without a precomputed mask builds the same one.
    np.testing.assert_array_equal(
        np.asarray(A.attend("xla", q, k, v, valid, None)), np.asarray(L.attention(q, k, v, mask))
    )
    _close(A.attend("flash", q, k, v, valid, None), L.attention(q, k, v, mask), valid, 1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_decoder_gradients_with_flash_under_remat_equal_xla(remat):
    """The custom VJP inside the decoder's scanned, rematerialised layer body: parameter gradients of a
    left-padded batch equal those of the xla backend without remat."""
    from flax import nnx

    from gadjax.models.config import ModelConfig
    from gadjax.models.decoder import Decoder, positions_from_mask

    hf = dict(model_type="qwen2", vocab_size=64, hidden_size=56, intermediate_size=48, num_hidden_layers=2)
    cfg = ModelConfig.from_hf_dict(dict(hf, num_attention_heads=7, num_key_value_heads=1, rope_theta=1e4))
    mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9])
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)))

    def grads(attention, remat):
        model = Decoder(cfg, rngs=nnx.Rngs(0), attention=attention, remat=remat)

        def loss(m):
            hidden, _ = m(ids, positions_from_mask(mask), mask)
            return jnp.sum(jax.nn.log_softmax(m.logits(hidden))[..., 0] * mask)

        return jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))

    for a, b in zip(grads("flash", remat), grads("xla", "none"), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4


def test_resolve_by_platform_and_clear_errors():
    assert A.resolve("auto", "cpu") == "xla"
    assert A.resolve("auto", "tpu") == "splash"
    assert A.resolve("auto", "gpu", jnp.bfloat16) == "cudnn"
    assert A.resolve("auto", "gpu", jnp.float32) == "xla"  # cuDNN's fused attention has no f32 kernel
    assert A.resolve("flash", "cpu") == "flash"
    assert A.resolve("cudnn", "gpu", jnp.bfloat16) == "cudnn"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        A.resolve("cudnn", "cpu", jnp.bfloat16)
    with pytest.raises(ValueError, match="needs model.dtype bfloat16"):
        A.resolve("cudnn", "gpu", jnp.float32)
    with pytest.raises(ValueError, match="'splash' needs a TPU"):
        A.resolve("splash", "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        A.resolve("fast", "cpu")


@pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN fused attention needs a GPU (bench/gpu_check.sh)"
)
@pytest.mark.parametrize("heads,kv", HEADS)
def test_cudnn_bfloat16_close_to_reference(heads, kv):
    q, k, v, valid = _inputs(heads, kv, [64, 20], 64)
    ref = _reference(q, k, v, valid)  # float32
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = jax.jit(lambda q, k, v: A.attend("cudnn", q, k, v, valid, None))(*half)
    assert out.dtype == jnp.bfloat16
    _close(out.astype(jnp.float32), ref, valid, 3e-2)


@pytest.mark.slow  # Pallas interpret mode: ~25 s on 2 cores
def test_splash_interpret_mode_equals_reference():
    from gadjax.models import splash

    q, k, v, valid = _inputs(7, 1, [13, 6], 13)
    ref = _reference(q, k, v, valid)
    run = lambda q, k, v: splash.attention(q, k, v, valid, interpret=True)
    _close(run(q, k, v), ref, valid, 1e-5)
    weight = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    g_ref = _grads(lambda q, k, v: _reference(q, k, v, valid), q, k, v, valid, weight)
    g_out = _grads(run, q, k, v, valid, weight)
    for a, b in zip(g_out, g_ref, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4
