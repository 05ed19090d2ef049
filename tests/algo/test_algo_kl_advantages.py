"""KL estimators and GRPO advantages vs numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_numpy_ref import np_agg

from gadjax.algo import LOSS_AGG_MODES, broadcast_to_tokens, grpo_advantages, kl_loss, kl_penalty

LOGP = np.array([[-1.0, -2.0, -0.1, -30.0], [-0.5, -3.0, -25.0, -1.0]], np.float32)
REF = np.array([[-1.2, -1.0, -0.1, -1.0], [-0.4, -6.0, -0.3, -9.0]], np.float32)
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)


def np_kl(logp, ref, kind):
    out = np.zeros(logp.shape, np.float64)
    for idx in np.ndindex(logp.shape):
        lp, rf = float(logp[idx]), float(ref[idx])
        if kind in ("k1", "kl"):
            out[idx] = lp - rf
        elif kind == "abs":
            out[idx] = abs(lp - rf)
        elif kind in ("k2", "mse"):
            out[idx] = 0.5 * (lp - rf) ** 2
        else:  # k3: exp(ref - logp) - (ref - logp) - 1, verl's clamps
            d = min(max(rf - lp, -20.0), 20.0)
            out[idx] = min(max(math.exp(d) - d - 1.0, -10.0), 10.0)
    return out


@pytest.mark.parametrize("kind", ["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl"])
def test_kl_penalty_matches_numpy(kind):
    got = kl_penalty(jnp.asarray(LOGP), jnp.asarray(REF), kind)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np_kl(LOGP, REF, kind), rtol=1e-5, atol=1e-6)


def test_k3_is_clamped_and_nonnegative():
    got = np.asarray(kl_penalty(LOGP, REF, "k3"))
    assert got[0, 3] == 10.0  # ref - logp = 29: exp huge, clamped to 10
    assert np.all(got >= 0)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_loss_aggregates_like_verl(kind, mode):
    got = kl_loss(LOGP, REF, MASK, kind=kind, loss_agg_mode=mode)
    np.testing.assert_allclose(float(got), np_agg(np_kl(LOGP, REF, kind), MASK, mode), rtol=1e-5)


def test_kl_reference_gets_no_gradient():
    g = jax.grad(lambda r: jnp.sum(kl_penalty(LOGP, r, "k3")))(jnp.asarray(REF))
    assert np.all(np.asarray(g) == 0)


def test_unknown_kl_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(LOGP, REF, "k4")


# ----------------------------------------------------------------------------- advantages


def np_grpo(r, n, eps=1e-6):
    out = np.zeros(len(r), np.float64)
    for g in range(len(r) // n):
        grp = np.asarray(r[g * n : (g + 1) * n], np.float64)
        if n == 1:
            continue
        mean, std = grp.mean(), grp.std(ddof=1)
        for j in range(n):
            out[g * n + j] = (grp[j] - mean) / (std + eps)
    return out


def test_grpo_groups_of_four_match_numpy_unbiased_std():
    r = np.random.default_rng(0).normal(size=12).astype(np.float32) * 3.0
    got = grpo_advantages(jnp.asarray(r), 4)
    np.testing.assert_allclose(np.asarray(got), np_grpo(r, 4), rtol=1e-5, atol=1e-6)


def test_grpo_group_of_one_is_zero():
    assert np.all(np.asarray(grpo_advantages(jnp.array([3.0, -1.0, 7.0]), 1)) == 0)


def test_grpo_constant_group_is_zero_not_nan():
    got = np.asarray(grpo_advantages(jnp.array([2.0, 2.0, 2.0, 2.0, 1.0, 3.0, 1.0, 3.0]), 4))
    assert np.all(np.isfinite(got))
    assert np.all(got[:4] == 0)


def test_grpo_dr_grpo_no_std_and_stop_gradient():
    r = jnp.array([1.0, 2.0, 6.0, 3.0])
    np.testing.assert_allclose(np.asarray(grpo_advantages(r, 2, norm_by_std=False)), [-0.5, 0.5, 1.5, -1.5])
    assert np.all(
        np.asarray(jax.grad(lambda x: jnp.sum(grpo_advantages(x, 2) * x))(r))
        == np.asarray(grpo_advantages(r, 2))
    )


def test_broadcast_to_tokens():
    got = broadcast_to_tokens(jnp.array([1.5, -2.0]), MASK)
    np.testing.assert_array_equal(np.asarray(got), np.array([[1.5] * 4, [-2.0, -2.0, 0, 0]], np.float32))


def test_grpo_bad_shape_raises():
    with pytest.raises(ValueError, match="B\\*N"):
        grpo_advantages(jnp.ones(7), 4)
