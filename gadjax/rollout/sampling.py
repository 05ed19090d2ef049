"""Token choice from float32 logits: greedy, temperature, top-k, top-p (nucleus), via Gumbel-max.

Order of the logit processors follows Hugging Face's `generate`: temperature, then top-k, then top-p
(the nucleus is computed on the distribution that remains after top-k). Everything is float32.

Sampling is by inversion of the CDF: one uniform u per row, token = the first index whose cumulative
probability exceeds u * total (found in two levels: a block of 256 tokens, then the token in it). It
is an exact draw from softmax(processed_logits) (up to float32 rounding of the cumulative sum, ~1e-7)
and needs ONE random number per row instead of the [rows, V] noise of the Gumbel-max trick:
generating that noise with threefry cost ~3x the rest of the sampling step on the SmolLM2 vocabulary
(49152) on CPU. Every row has its own key, folded from (prompt, sample) and then from the response
position (`row_keys`, `step_keys`), so a draw never depends on where the row sits: the batch size, the
micro-batch chunk, the decode slot of continuous batching or the mesh. The same key gives the same
tokens for every layout.

Trade-off (why `method="gumbel"` exists): inversion is more sensitive to tiny logit differences than
Gumbel-max. A perturbation e of the logits (e.g. a different reduction order under tensor
parallelism, ~1e-6) flips an inversion draw with probability ~ e / p(token) but a Gumbel-max draw only
with probability ~ e x (density of the top-2 gap at 0). On peaked (trained) distributions both are
negligible; on near-uniform random-init models over a large vocabulary, inversion draws can differ
between meshes. Use "gumbel" where bitwise-robust cross-mesh reproducibility matters more than speed.
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


def apply_top_p_rows(logits: jax.Array, p: jax.Array) -> jax.Array:
    """`apply_top_p` with one p per row (p [rows]; rows with p >= 1 keep everything). The sort runs only
    when some row filters (a serving batch mixes requests with and without top_p)."""

    def nucleus(x: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(x, axis=-1)
        sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < p[:, None]
        threshold = jnp.min(jnp.where(keep_sorted, sorted_x, jnp.inf), axis=-1, keepdims=True)
        return jnp.where((x >= threshold) | (p[:, None] >= 1.0), x, NEG_INF)

    return jax.lax.cond(jnp.any(p < 1.0), nucleus, lambda x: x, logits)


def choose_tokens_rows(
    logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array
) -> jax.Array:
    """One token per row with per-row settings (temperature [rows], 0 = greedy; top_p [rows]): the
    serving engine's draw, where every slot holds a different request. Same draw as `choose_tokens` for
    a row with the same settings and key (inversion, top_k off)."""
    logits = logits.astype(jnp.float32)
    greedy = temperature <= 0.0
    x = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    x = apply_top_p_rows(x, jnp.where(greedy, 1.0, top_p))
    sampled = sample_by_inversion(jnp.exp(jax.nn.log_softmax(x, axis=-1)), keys)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1).astype(jnp.int32), sampled)


def process_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """The sampling distribution's logits: logits / T, then top-k, then top-p (float32). T > 0."""
    x = logits.astype(jnp.float32) / jnp.float32(temperature)
    x = apply_top_k(x, top_k)
    return apply_top_p(x, top_p)


def _last_positive(p: jax.Array) -> jax.Array:
    """Index of the last entry > 0 along the last axis (0 when there is none)."""
    n = p.shape[-1]
    return n - 1 - jnp.argmax(p[..., ::-1] > 0, axis=-1)


def row_keys(prompt_keys: jax.Array, rows: jax.Array, n_samples: int) -> jax.Array:
    """The key of each (prompt, sample) row: fold_in(prompt_keys[row // n_samples], row % n_samples).

    prompt_keys [B]: one typed key per prompt of the batch (the Sampler folds the global prompt index into
    the rollout key). Every draw of a row comes from its own key folded with the position (`step_keys`),
    so a row's draws depend on (prompt, sample, position) only: not on the batch size, the chunking
    (micro_batches), the decode slot it runs in (continuous batching) or the sharding."""
    return jax.vmap(jax.random.fold_in)(prompt_keys[rows // n_samples], rows % n_samples)


def step_keys(keys: jax.Array, positions: jax.Array | int) -> jax.Array:
    """Per-row keys [rows] folded with each row's response position (a scalar or [rows])."""
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.uint32), keys.shape)
    return jax.vmap(jax.random.fold_in)(keys, positions)


def sample_by_inversion(probs: jax.Array, keys: jax.Array, block: int = 256) -> jax.Array:
    """One draw per row of `probs` [rows, V] (need not be normalised), by inverting the CDF.

    Two levels, so no cumulative sum runs over the whole vocabulary (XLA's CPU cumsum over 49152
    entries cost more than the rest of the draw): the CDF of per-block masses picks the block that
    holds u * total, then the CDF inside that block picks the token. Tokens of probability 0 are
    never chosen: the chosen index is the first whose CDF exceeds the target, so its own mass is
    positive; float rounding that puts the target at the very top of a block (or of the whole
    distribution) is clamped to that block's (or the last block's) last token of positive mass.
    keys [rows]: one typed key per row (one uniform each).
    """
    rows, v = probs.shape
    nb = -(-v // block)
    blocks = jnp.pad(probs, ((0, 0), (0, nb * block - v))).reshape(rows, nb, block)
    block_mass = blocks.sum(axis=-1)  # [rows, nb]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    target = u * block_cdf[:, -1]
    j = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), _last_positive(block_mass))
    within = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]  # [rows, block]
    before = jnp.where(j > 0, jnp.take_along_axis(block_cdf, jnp.maximum(j - 1, 0)[:, None], 1)[:, 0], 0.0)
    cdf = before[:, None] + jnp.cumsum(within, axis=-1)
    i = jnp.minimum(jnp.sum(cdf <= target[:, None], axis=-1), _last_positive(within))
    return (j * block + i).astype(jnp.int32)


def choose_tokens(
    logits: jax.Array,
    keys: jax.Array,
    *,
    greedy: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    method: str = "inversion",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pick one token per row of float32 logits [rows, V].

    Returns (tokens int32 [rows], logprob under softmax(logits) (temperature 1), logprob under the
    sampling distribution). Greedy decoding is a point mass, so its sampling log-prob is 0.
    keys [rows]: one typed key per row (see `row_keys` / `step_keys`).
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_lp = jnp.zeros(tokens.shape, jnp.float32)
    else:
        processed = process_logits(logits, temperature, top_k, top_p)
        sampling_logp = jax.nn.log_softmax(processed, axis=-1)
        if method == "gumbel":
            v = logits.shape[-1]
            gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (v,), jnp.float32))(keys)
            tokens = jnp.argmax(processed + gumbel, axis=-1).astype(jnp.int32)
        elif method == "inversion":
            tokens = sample_by_inversion(jnp.exp(sampling_logp), keys)
        else:
            raise ValueError(f"sampling method {method!r}: 'inversion' or 'gumbel'")
        sampling_lp = jnp.take_along_axis(sampling_logp, tokens[:, None], -1)[:, 0]
    lp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return tokens, lp, sampling_lp
