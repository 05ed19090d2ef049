"""Per-token KL estimators to a frozen reference policy (SPEC.md "G loss": beta * KL, k3, beta 0.001).

Same names and clamps as verl's ``core_algos.kl_penalty`` (itself after TRL and J. Schulman,
"Approximating KL divergence", http://joschu.net/blog/kl-approx.html). With samples y ~ pi and
log-ratio d = logp - ref_logp, each estimator's expectation under pi approximates KL(pi || ref).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gadjax.algo.losses import aggregate_loss

KL_KINDS: tuple[str, ...] = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "low_var_kl") -> jax.Array:
    """Elementwise KL estimate, float32, same shape as the inputs.

    - ``k1`` / ``kl``: logp - ref_logp (unbiased, high variance; Schulman's k1).
    - ``abs``: |logp - ref_logp| (verl extra).
    - ``k2`` / ``mse``: 0.5 * (logp - ref_logp)^2 (Schulman's k2, low variance, biased).
    - ``k3`` / ``low_var_kl``: exp(ref - logp) - (ref - logp) - 1 (Schulman's k3, unbiased, >= 0); as in
      verl, ref - logp is clamped to [-20, 20] before the exp and the result to [-10, 10]. This is the
      GAD estimator (SPEC.md).

    The reference log-probs are treated as constants (stop_gradient): the reference is frozen.
    """
    logp = jnp.asarray(logp).astype(jnp.float32)
    ref = jax.lax.stop_gradient(jnp.asarray(ref_logp).astype(jnp.float32))
    if kind in ("k1", "kl"):
        return logp - ref
    if kind == "abs":
        return jnp.abs(logp - ref)
    if kind in ("k2", "mse"):
        return 0.5 * jnp.square(logp - ref)
    if kind in ("k3", "low_var_kl"):
        kl = jnp.clip(ref - logp, -20.0, 20.0)
        return jnp.clip(jnp.exp(kl) - kl - 1.0, -10.0, 10.0)
    raise ValueError(f"kl_penalty: unknown kind {kind!r}; expected one of {KL_KINDS}")


def kl_loss(
    logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array,
    *,
    kind: str = "low_var_kl",
    loss_agg_mode: str = "token-mean",
    horizon: float | None = None,
    num_tokens: jax.Array | float | None = None,
    num_seqs: jax.Array | float | None = None,
    row_tokens: jax.Array | None = None,
) -> jax.Array:
    """The actor's KL loss as verl computes it: agg_loss(kl_penalty(logp, ref, kind), mask, mode).

    The G loss is then ``pg_loss + beta * kl_loss`` (verl ``use_kl_loss=True``, ``kl_loss_coef`` beta).
    ``row_tokens``: packed rows (gadjax.algo.losses.aggregate_loss).
    """
    return aggregate_loss(
        kl_penalty(logp, ref_logp, kind),
        mask,
        loss_agg_mode,
        horizon=horizon,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        row_tokens=row_tokens,
    )
