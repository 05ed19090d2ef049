"""Chunked log-probs vs an unchunked float64 numpy log-softmax gather, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadjax.algo import response_logprobs, token_logprobs

B, T, H, V = 2, 11, 8, 37


def _inputs(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k[0], (B, T, H), jnp.float32)
    w = jax.random.normal(k[1], (V, H), jnp.float32) * 0.5
    targets = jax.random.randint(k[2], (B, T), 0, V)
    return hidden, w, targets


def np_logprobs(hidden, w_vh, targets):
    """float64 loop reference: log_softmax(h @ W^T)[target] and entropy."""
    hidden, w = np.asarray(hidden, np.float64), np.asarray(w_vh, np.float64)
    logp = np.zeros(targets.shape)
    ent = np.zeros(targets.shape)
    for b in range(hidden.shape[0]):
        for t in range(hidden.shape[1]):
            z = w @ hidden[b, t]
            m = z.max()
            lse = m + np.log(np.sum(np.exp(z - m)))
            p = np.exp(z - lse)
            logp[b, t] = z[int(targets[b, t])] - lse
            ent[b, t] = -np.sum(p * (z - lse))
    return logp, ent


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64])
def test_chunked_matches_numpy(chunk_size):
    hidden, w, targets = _inputs()
    logp, ent = token_logprobs(hidden, w, targets, chunk_size=chunk_size, return_entropy=True)
    ref_lp, ref_ent = np_logprobs(hidden, w, np.asarray(targets))
    assert logp.shape == (B, T) and logp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logp), ref_lp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=1e-5, rtol=1e-5)


def test_hv_layout_and_callable_head_agree():
    hidden, w, targets = _inputs(1)
    a, _ = token_logprobs(hidden, w, targets, chunk_size=4)
    b, _ = token_logprobs(hidden, w.T, targets, chunk_size=4, head_layout="hv")
    c, _ = token_logprobs(hidden, lambda h: h @ w.T, targets, chunk_size=4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)


def _unchunked(hidden, w, targets):
    logits = jnp.einsum("bth,vh->btv", hidden, w)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk_size", [4, 64])  # 64: one chunk, not checkpointed
def test_gradients_match_unchunked(chunk_size):
    hidden, w, targets = _inputs(2)
    weights = jax.random.normal(jax.random.key(9), (B, T))  # a non-uniform cotangent

    def chunked(hd, ww):
        lp, ent = token_logprobs(hd, ww, targets, chunk_size=chunk_size, return_entropy=True)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent)

    def full(hd, ww):
        logits = jnp.einsum("bth,vh->btv", hd, ww)
        logq = jax.nn.log_softmax(logits, -1)
        ent = -jnp.sum(jnp.exp(logq) * logq, -1)
        return jnp.sum(_unchunked(hd, ww, targets) * weights) + 0.1 * jnp.sum(ent)

    g1 = jax.grad(chunked, argnums=(0, 1))(hidden, w)
    g2 = jax.grad(full, argnums=(0, 1))(hidden, w)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def _all_shapes(jaxpr, out):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            out.append(tuple(getattr(v.aval, "shape", ())))
        for p in eqn.params.values():
            for sub in p if isinstance(p, list | tuple) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _all_shapes(inner, out)
    return out


def test_forward_and_backward_never_build_full_bt_v():
    """No intermediate as large as [B, T, V] appears anywhere in the grad program."""
    hidden, w, targets = _inputs(3)
    f = lambda hd, ww: jnp.sum(token_logprobs(hd, ww, targets, chunk_size=4, return_entropy=True)[0])
    shapes = _all_shapes(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(hidden, w).jaxpr, [])
    biggest = max(int(np.prod(s)) for s in shapes if s)
    assert biggest < B * T * V, f"largest intermediate {biggest} >= B*T*V={B * T * V}"
    # the unchunked version does build it (so the check has teeth)
    g = lambda hd, ww: jnp.sum(_unchunked(hd, ww, targets))
    shapes = _all_shapes(jax.make_jaxpr(jax.grad(g, argnums=(0, 1)))(hidden, w).jaxpr, [])
    assert max(int(np.prod(s)) for s in shapes if s) >= B * T * V


def test_bf16_compute_dtype_is_close_and_float32():
    hidden, w, targets = _inputs(4)
    lp, _ = token_logprobs(hidden, w, targets, chunk_size=4, compute_dtype=jnp.bfloat16)
    assert lp.dtype == jnp.float32
    ref, _ = np_logprobs(hidden, w, np.asarray(targets))
    np.testing.assert_allclose(np.asarray(lp), ref, atol=0.1)


def test_response_logprobs_layout():
    """concat(prompt P, response R): columns P-1 .. P+R-2 predict response tokens 0 .. R-1."""
    p, r = 5, 6
    k = jax.random.split(jax.random.key(5), 3)
    hidden = jax.random.normal(k[0], (B, p + r, H))
    w = jax.random.normal(k[1], (V, H))
    resp = jax.random.randint(k[2], (B, r), 0, V)
    lp, ent = response_logprobs(hidden, w, resp, p, chunk_size=4, return_entropy=True)
    full_lp, full_ent = np_logprobs(hidden, w, np.zeros((B, p + r), np.int64))
    for b in range(B):
        for j in range(r):
            ref_lp, _ = np_logprobs(
                hidden[b : b + 1, p - 1 + j : p + j], w, np.asarray(resp)[b : b + 1, j : j + 1]
            )
            np.testing.assert_allclose(float(lp[b, j]), ref_lp[0, 0], atol=1e-5)
            np.testing.assert_allclose(float(ent[b, j]), full_ent[b, p - 1 + j], atol=1e-5)
    with pytest.raises(ValueError, match="too short"):
        response_logprobs(hidden[:, : p + r - 2], w, resp, p)


def test_jit_and_targets_out_of_range_are_finite():
    hidden, w, targets = _inputs(6)
    bad = targets.at[0, 0].set(-100).at[1, 1].set(V + 5)  # ignored positions, masked by the caller
    lp, _ = jax.jit(lambda h, ww, t: token_logprobs(h, ww, t, chunk_size=3))(hidden, w, bad)
    assert np.all(np.isfinite(np.asarray(lp)))


def test_sharded_8_devices_matches_single_device():
    """Batch over (data, fsdp), head vocab over tensor / embed over fsdp: same values and grads."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < 8:
        pytest.skip("needs the 8-device CPU mesh from tests/conftest.py")
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    k = jax.random.split(jax.random.key(11), 3)
    hidden = jax.random.normal(k[0], (8, 12, H))
    w = jax.random.normal(k[1], (40, H)) * 0.5
    targets = jax.random.randint(k[2], (8, 12), 0, 40)
    mask = jnp.ones((8, 12)).at[3, 6:].set(0)

    def loss(hd, ww):
        lp, ent = token_logprobs(hd, ww, targets, chunk_size=5, return_entropy=True)
        return -jnp.sum(lp * mask) / jnp.sum(mask) + 0.01 * jnp.mean(ent)

    ref_val, ref_grads = jax.value_and_grad(loss, argnums=(0, 1))(hidden, w)
    hs = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    ws = NamedSharding(mesh, P("tensor", "fsdp"))
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), in_shardings=(hs, ws), out_shardings=None)
    val, grads = f(jax.device_put(hidden, hs), jax.device_put(w, ws))
    val = float(val)  # block before anything else is dispatched (2-core CPU, see HELPERS.md)
    np.testing.assert_allclose(val, float(ref_val), rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 0.8, 1.7])
def test_temperature_divides_the_logits_before_the_softmax(temperature):
    """SPEC.md "Temperature": log softmax(logits / T)[target], against the float64 reference at W / T."""
    hidden, w, targets = _inputs(3)
    logp, ent = token_logprobs(hidden, w, targets, chunk_size=4, return_entropy=True, temperature=temperature)
    ref_lp, ref_ent = np_logprobs(hidden, np.asarray(w, np.float64) / temperature, np.asarray(targets))
    np.testing.assert_allclose(np.asarray(logp), ref_lp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=1e-5, rtol=1e-5)
    plain, _ = token_logprobs(hidden, w, targets, chunk_size=4)
    assert not np.allclose(np.asarray(plain), ref_lp, atol=1e-3)  # the scaling is not a no-op


def test_temperature_must_be_positive():
    hidden, w, targets = _inputs()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, w, targets, temperature=0.0)
