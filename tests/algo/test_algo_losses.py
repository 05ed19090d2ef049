"""Losses vs straightforward numpy references (row loops) on hand-made padded batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_numpy_ref import np_agg

from gadjax.algo import (
    LOSS_AGG_MODES,
    aggregate_loss,
    bce_discriminator_loss,
    bradley_terry_loss,
    ppo_clip_loss,
    sft_loss,
)

# Row 0 full, row 1 padded, row 2 a single token, row 3 empty (all-zero mask).
MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ],
    np.int32,
)


def _loss_mat(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=MASK.shape).astype(np.float32)
    x[MASK == 0] = 1e3  # garbage on padding must not leak into the result
    return x


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_loss_matches_numpy(mode):
    x = _loss_mat()
    got = aggregate_loss(jnp.asarray(x), jnp.asarray(MASK), mode)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), np_agg(x, MASK, mode), rtol=1e-6, atol=1e-6)


def test_aggregate_loss_horizon_and_bf16_input():
    x = _loss_mat(1)
    x[MASK == 0] = 0.0
    got = aggregate_loss(jnp.asarray(x), MASK, "seq-mean-token-sum-norm", horizon=1536)
    np.testing.assert_allclose(float(got), np_agg(x, MASK, "seq-mean-token-sum-norm", 1536), rtol=1e-6)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = aggregate_loss(xb, MASK, "token-mean")
    assert got.dtype == jnp.float32
    ref = np_agg(np.asarray(xb.astype(jnp.float32)), MASK, "token-mean")
    np.testing.assert_allclose(float(got), ref, rtol=1e-6)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_loss_all_masked_is_zero_with_finite_grad(mode):
    x = jnp.asarray(_loss_mat())
    zero = jnp.zeros_like(x)
    assert float(aggregate_loss(x, zero, mode)) == 0.0
    g = jax.grad(lambda v: aggregate_loss(v, MASK, mode))(x)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[MASK == 0] == 0.0)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), "token-sum-weird")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_with_global_counts_sum_to_full_batch(mode):
    """Gradient accumulation contract: global num_tokens / num_seqs make micro losses add up."""
    x = _loss_mat(2)
    full = float(aggregate_loss(x, MASK, mode))
    n_tok = MASK.sum()
    n_seq = (MASK.sum(-1) > 0).sum()
    parts = [
        float(aggregate_loss(x[i : i + 2], MASK[i : i + 2], mode, num_tokens=n_tok, num_seqs=n_seq))
        for i in (0, 2)
    ]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)


def test_sft_loss_matches_numpy():
    rng = np.random.default_rng(3)
    logp = -np.abs(rng.normal(size=MASK.shape)).astype(np.float32)
    ref_num, ref_den = 0.0, 0
    for b in range(MASK.shape[0]):
        for t in range(MASK.shape[1]):
            if MASK[b, t]:
                ref_num -= float(logp[b, t])
                ref_den += 1
    np.testing.assert_allclose(float(sft_loss(logp, MASK)), ref_num / ref_den, rtol=1e-6)


# ----------------------------------------------------------------------------- discriminator

S = np.array([0.5, -1.0, 2.0, 0.0, 3.0, -2.0, 1.0, 1.5, -0.5], np.float32)  # B=3 prompts, N=3
T = np.array([1.0, 0.0, 4.0], np.float32)
N = 3


def _softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def np_d_metrics(s, t, n):
    acc, cnt = 0, 0
    for i in range(len(t)):
        for j in range(n):
            acc += int(t[i] > s[i * n + j])
            cnt += 1
    return acc / cnt, float(np.mean(t.astype(np.float64))), float(np.mean(s.astype(np.float64)))


def test_bradley_terry_matches_numpy():
    ref = 0.0
    for i in range(len(T)):
        ref += sum(_softplus(float(S[i * N + j]) - float(T[i])) for j in range(N)) / N
    ref /= len(T)
    loss, m = bradley_terry_loss(jnp.asarray(S), jnp.asarray(T), N)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    acc, tm, sm = np_d_metrics(S, T, N)
    np.testing.assert_allclose(float(m["d_acc"]), acc, rtol=1e-6)
    np.testing.assert_allclose(float(m["teacher_score_mean"]), tm, rtol=1e-6)
    np.testing.assert_allclose(float(m["student_score_mean"]), sm, rtol=1e-6)


def test_bradley_terry_gradient_pushes_teacher_up_student_down():
    loss_fn = lambda s, t: bradley_terry_loss(s, t, N)[0]
    gs, gt = jax.grad(loss_fn, argnums=(0, 1))(jnp.asarray(S), jnp.asarray(T))
    # Gradient descent moves against the gradient: D(t) goes up (grad < 0), D(s) goes down (grad > 0).
    assert np.all(np.asarray(gt) < 0)
    assert np.all(np.asarray(gs) > 0)
    # D(t) is shared by its N pairs: its gradient is minus the sum of its samples' gradients.
    np.testing.assert_allclose(np.asarray(gt), -np.asarray(gs).reshape(-1, N).sum(1), rtol=1e-6)


def test_bradley_terry_pair_mask_drops_pairs_and_empty_prompts():
    pm = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1], np.float32)  # prompt 1 has no real pair
    ref = (
        sum(_softplus(float(S[j]) - float(T[0])) for j in range(2)) / 2
        + sum(_softplus(float(S[6 + j]) - float(T[2])) for j in range(3)) / 3
    ) / 2
    loss, m = bradley_terry_loss(S, T, N, pair_mask=pm)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    acc = (int(T[0] > S[0]) + int(T[0] > S[1]) + sum(int(T[2] > S[6 + j]) for j in range(3))) / 5
    np.testing.assert_allclose(float(m["d_acc"]), acc, rtol=1e-6)
    np.testing.assert_allclose(float(m["teacher_score_mean"]), (T[0] + T[2]) / 2, rtol=1e-6)


def test_bce_discriminator_matches_numpy():
    ref = 0.0
    for i in range(len(T)):
        ref += _softplus(-float(T[i])) + sum(_softplus(float(S[i * N + j])) for j in range(N)) / N
    ref /= len(T)
    loss, m = bce_discriminator_loss(S, T, N)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    acc, tm, sm = np_d_metrics(S, T, N)
    np.testing.assert_allclose(float(m["d_acc"]), acc, rtol=1e-6)
    gs, gt = jax.grad(lambda s, t: bce_discriminator_loss(s, t, N)[0], argnums=(0, 1))(S, T)
    assert np.all(np.asarray(gt) < 0) and np.all(np.asarray(gs) > 0)


def test_discriminator_shape_errors():
    with pytest.raises(ValueError, match="B\\*N"):
        bradley_terry_loss(jnp.ones(5), jnp.ones(2), 3)


# ----------------------------------------------------------------------------- PPO


def np_ppo(logp, old, adv, mask, eps, c, mode):
    """Per-token scalar loop of verl's compute_policy_loss_vanilla."""
    b, t = logp.shape
    loss = np.zeros((b, t), np.float64)
    clip, lower, kl, ratios = [], [], [], []
    for i in range(b):
        for j in range(t):
            d = min(max(float(logp[i, j]) - float(old[i, j]), -20.0), 20.0)
            r = math.exp(d)
            a = float(adv[i, j])
            l1 = -a * r
            l2 = -a * min(max(r, 1 - eps), 1 + eps)
            lc = max(l1, l2)
            l3 = -a * c
            loss[i, j] = min(l3, lc) if a < 0 else lc
            if mask[i, j]:
                clip.append(float(l2 > l1))
                lower.append(float(lc > l3 and a < 0))
                kl.append(-d)
                ratios.append(r)
    metrics = {
        "pg_clipfrac": np.mean(clip),
        "pg_clipfrac_lower": np.mean(lower),
        "ppo_kl": np.mean(kl),
        "ratio_mean": np.mean(ratios),
    }
    return np_agg(loss, mask, mode), metrics


def _ppo_batch():
    mask = MASK[:3]  # no empty row: the metrics reference is a plain mean
    old = np.full(mask.shape, -1.0, np.float32)
    # log-ratios: inside the clip, above 1+eps, below 1-eps, and huge (ratio e^2.5 ~ 12 > c = 3)
    dl = np.array(
        [
            [0.0, 0.1, 0.5, -0.5, 2.5, 2.5],
            [0.5, -0.5, 2.5, 0.0, 0.0, 0.0],
            [2.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    adv = np.array(
        [
            [1.0, -1.0, 1.0, -1.0, -2.0, 2.0],
            [-1.0, 1.0, -0.5, 0.0, 0.0, 0.0],
            [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    return (old + dl), old, adv, mask


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_ppo_clip_matches_numpy_incl_dual_clip(mode):
    logp, old, adv, mask = _ppo_batch()
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, clip_ratio_c=3.0, loss_agg_mode=mode)
    ref, ref_m = np_ppo(logp, old, adv, mask, 0.2, 3.0, mode)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    for k, v in ref_m.items():
        np.testing.assert_allclose(float(m[k]), v, rtol=1e-5, err_msg=k)
    assert float(m["pg_clipfrac_lower"]) > 0  # the dual-clip branch was exercised


def test_ppo_dual_clip_branch_value_and_zero_gradient():
    # A < 0 and ratio e^2.5 > c: loss is exactly -A * c and constant in logp.
    logp, old, adv = jnp.array([[1.5]]), jnp.array([[-1.0]]), jnp.array([[-2.0]])
    f = lambda lp: ppo_clip_loss(lp, old, adv, jnp.ones((1, 1)))[0]
    np.testing.assert_allclose(float(f(logp)), 2.0 * 3.0, rtol=1e-6)
    assert float(jax.grad(f)(logp)[0, 0]) == 0.0
    # Unclipped token: d loss / d logp = -A * ratio.
    lp2 = jnp.array([[-0.95]])
    g = float(jax.grad(lambda lp: ppo_clip_loss(lp, old, jnp.array([[1.5]]), jnp.ones((1, 1)))[0])(lp2)[0, 0])
    np.testing.assert_allclose(g, -1.5 * math.exp(0.05), rtol=1e-5)


def test_ppo_on_policy_ratio_one_and_sequence_advantages():
    """One step per rollout batch (SPEC.md): ratio 1, clip inactive, loss = -token-mean(A)."""
    logp = jnp.asarray(-np.abs(np.random.default_rng(4).normal(size=MASK.shape)), jnp.float32)
    adv_seq = jnp.array([0.5, -1.0, 2.0, 3.0])
    loss, m = ppo_clip_loss(logp, logp, adv_seq, MASK)
    ref = np_agg(-np.broadcast_to(np.asarray(adv_seq)[:, None], MASK.shape), MASK, "token-mean")
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    assert float(m["pg_clipfrac"]) == 0.0 and float(m["ratio_mean"]) == 1.0
