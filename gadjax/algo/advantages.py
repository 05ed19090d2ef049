"""GRPO group-relative advantages from discriminator rewards (SPEC.md "GRPO advantage per group")."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grpo_advantages(rewards: jax.Array, n: int, *, eps: float = 1e-6, norm_by_std: bool = True) -> jax.Array:
    """Outcome advantages per group of N samples of the same prompt.

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)

    with the UNBIASED std (ddof=1), as verl's ``compute_grpo_outcome_advantage`` (torch.std).
    ``norm_by_std=False`` gives Dr.GRPO's A_i = r_i - mean (arXiv 2503.20783; verl
    ``norm_adv_by_std_in_grpo=False``).

    A group of 1 (N == 1) gives A = 0, as SPEC.md states. NOTE: verl itself uses mean 0 / std 1 for a
    singleton group, i.e. A = r / (1 + eps); with N = 8 (the GAD setting) the two never differ.

    Args:
      rewards: [B*N] raw rewards r_i = D(x, y_s^i), prompt i's samples at rows i*N .. i*N+N-1. Treated as
        constants (stop_gradient; SPEC.md: pre-update D, no gradient).
      n: samples per prompt N (static).
    Returns:
      [B*N] float32 advantages.
    """
    r = jax.lax.stop_gradient(jnp.asarray(rewards).astype(jnp.float32))
    if r.ndim != 1 or n < 1 or r.shape[0] % n != 0:
        raise ValueError(f"grpo_advantages: rewards {r.shape} must be [B*N] with N={n} dividing its length")
    if n == 1:
        return jnp.zeros_like(r)
    g = r.reshape(-1, n)
    centred = g - jnp.mean(g, axis=1, keepdims=True)
    if norm_by_std:
        std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) / (n - 1))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def broadcast_to_tokens(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] sequence advantages -> [B, T] token advantages, zero on masked tokens (verl:
    ``scores.unsqueeze(-1) * response_mask``)."""
    adv = jnp.asarray(advantages).astype(jnp.float32)
    m = jnp.asarray(mask).astype(jnp.float32)
    if adv.ndim != 1 or m.ndim != 2 or m.shape[0] != adv.shape[0]:
        raise ValueError(f"broadcast_to_tokens: advantages {adv.shape} must be [B] and mask {m.shape} [B, T]")
    return adv[:, None] * m
