"""Token choice from float32 logits: greedy, temperature, top-k, top-p (nucleus), via Gumbel-max.

Order of the logit processors follows Hugging Face's `generate`: temperature, then top-k, then top-p
(the nucleus is computed on the distribution that remains after top-k). Everything is float32.

Sampling uses the Gumbel-max trick: argmax(processed_logits + Gumbel noise) is an exact draw from
softmax(processed_logits) (Gumbel 1954; Maddison et al. 2014). The noise for a step is one [rows, V]
draw from a key folded from the step index, and jax's partitionable threefry (on by default in jax >=
0.5) makes that draw identical whether the array is computed on one device or sharded over a mesh,
so the same key gives the same tokens on any mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (ties with the k-th kept too), the rest to -inf. k <= 0: off."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def apply_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keep the smallest set of most probable tokens whose mass is >= p.

    The top token is always kept (its exclusive prefix mass is 0 < p). Tokens tied in logit with the
    last kept one are kept as well. p >= 1: off.
    """
    if p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < p
    # Smallest kept logit = the threshold; everything at or above it is kept.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def process_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """The sampling distribution's logits: logits / T, then top-k, then top-p (float32). T > 0."""
    x = logits.astype(jnp.float32) / jnp.float32(temperature)
    x = apply_top_k(x, top_k)
    return apply_top_p(x, top_p)


def choose_tokens(
    logits: jax.Array,
    key: jax.Array,
    *,
    greedy: bool,
    temperature: float,
    top_k: int,
    top_p: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pick one token per row of float32 logits [rows, V].

    Returns (tokens int32 [rows], logprob under softmax(logits) (temperature 1), logprob under the
    sampling distribution). Greedy decoding is a point mass, so its sampling log-prob is 0.
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_lp = jnp.zeros(tokens.shape, jnp.float32)
    else:
        processed = process_logits(logits, temperature, top_k, top_p)
        gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
        tokens = jnp.argmax(processed + gumbel, axis=-1).astype(jnp.int32)
        sampling_lp = jnp.take_along_axis(jax.nn.log_softmax(processed, axis=-1), tokens[:, None], -1)[:, 0]
    lp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return tokens, lp, sampling_lp
