"""Pure loss math for GAD (../shared/SPEC.md): SFT, discriminator (Bradley-Terry / BCE), PPO clip.

Every function computes in float32 whatever the input dtype, takes explicit masks, and is safe on
rows whose mask is all zero (no NaN). Names follow verl's ``verl/trainer/ppo/core_algos.py`` so that
metrics compare with the authors' verl-based runs.

Gradient accumulation: ``aggregate_loss`` (and the losses built on it) accept the GLOBAL token / sequence
counts of the whole optimizer batch (``num_tokens`` / ``num_seqs``). With those, the per-micro-batch
losses simply SUM to the full-batch loss, as in verl's ``agg_loss(..., batch_num_tokens,
global_batch_size)``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den == 0 (an empty mask contributes nothing instead of NaN).

    The double ``where`` keeps the gradient finite too (no 0/0 in the untaken branch).
    """
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over positions where ``mask`` is nonzero (verl_F.masked_mean); 0 if none."""
    x, mask = _f32(x), _f32(mask)
    return _safe_div(jnp.sum(x * mask), jnp.sum(mask))


def aggregate_loss(
    loss_mat: jax.Array,
    mask: jax.Array,
    mode: str = "token-mean",
    *,
    horizon: float | None = None,
    num_tokens: jax.Array | float | None = None,
    num_seqs: jax.Array | float | None = None,
    row_tokens: jax.Array | None = None,
) -> jax.Array:
    """Aggregate a per-token loss matrix [B, T] into a scalar, as verl's ``core_algos.agg_loss``.

    Modes (L = loss_mat * mask, n_b = sum_t mask[b, t], S = sequences with n_b > 0):
      - ``token-mean``:               sum_{b,t} L / sum_{b,t} mask               (DAPO / GAD default)
      - ``seq-mean-token-sum``:        mean_{b in S} sum_t L[b]
      - ``seq-mean-token-mean``:       mean_{b in S} (sum_t L[b] / n_b)          (original GRPO)
      - ``seq-mean-token-sum-norm``:   mean_{b in S} (sum_t L[b]) / horizon       (Dr.GRPO, arXiv 2503.20783
        eq. for MAX_TOKENS normalisation; horizon defaults to T = loss_mat.shape[-1], verl's default
        ``loss_scale_factor``; pass a constant so the scale does not change with the bucket length).

    This follows the current verl definition (``agg_loss`` with ``global_batch_size``): fully masked
    sequences are excluded from the sequence mean. Older verl (<= 0.5) divided the token-sum-norm mode by
    T only, without the mean over sequences (a loss B times larger); we take the newer one, which is
    also the Dr.GRPO paper's 1/G factor.

    Args:
      loss_mat: [B, T] per-token loss, any float dtype (computed in float32).
      mask: [B, T] 1 on tokens that count.
      mode: one of ``LOSS_AGG_MODES``.
      horizon: constant normaliser for ``seq-mean-token-sum-norm`` (default T).
      num_tokens: global token count for ``token-mean`` (default: this batch's count).
      num_seqs: global non-empty sequence count for the ``seq-mean-*`` modes (default: this batch's).
      row_tokens: packed rows (gadjax.data.packing): [B, T] holds the response-token count n_b of the row
        each masked token belongs to, and the rows of loss_mat are packed sequences, not rows. Every mode
        is then a weighted token sum: sum_t L[b] / n_b summed over rows is sum_tokens L / n_row(token).
        num_seqs is required, and horizon for ``seq-mean-token-sum-norm``.
    Returns:
      float32 scalar; 0 when nothing is unmasked.
    """
    loss_mat, mask = _f32(loss_mat), _f32(mask)
    if loss_mat.shape != mask.shape or loss_mat.ndim != 2:
        raise ValueError(
            f"aggregate_loss: loss_mat {loss_mat.shape} and mask {mask.shape} must both be [B, T]"
        )
    masked = loss_mat * mask
    if row_tokens is not None:
        return _aggregate_packed(masked, mask, _f32(row_tokens), mode, horizon, num_tokens, num_seqs)
    if mode == "token-mean":
        den = jnp.sum(mask) if num_tokens is None else _f32(num_tokens)
        return _safe_div(jnp.sum(masked), den)
    seq_tokens = jnp.sum(mask, axis=-1)
    seq_valid = (seq_tokens > 0).astype(jnp.float32)
    den = jnp.sum(seq_valid) if num_seqs is None else _f32(num_seqs)
    seq_sum = jnp.sum(masked, axis=-1)
    if mode == "seq-mean-token-sum":
        return _safe_div(jnp.sum(seq_sum * seq_valid), den)
    if mode == "seq-mean-token-mean":
        seq_mean = _safe_div(seq_sum, seq_tokens)
        return _safe_div(jnp.sum(seq_mean * seq_valid), den)
    if mode == "seq-mean-token-sum-norm":
        h = float(loss_mat.shape[-1]) if horizon is None else float(horizon)
        if h <= 0:
            raise ValueError(f"aggregate_loss: horizon must be > 0, got {h}")
        return _safe_div(jnp.sum(seq_sum * seq_valid), den) / h
    raise ValueError(f"aggregate_loss: unknown loss_agg_mode {mode!r}; expected one of {LOSS_AGG_MODES}")


def _aggregate_packed(masked, mask, row_tokens, mode, horizon, num_tokens, num_seqs) -> jax.Array:
    """aggregate_loss for packed rows: the padded layout's value, from per-token row lengths."""
    if mode == "token-mean":
        den = jnp.sum(mask) if num_tokens is None else _f32(num_tokens)
        return _safe_div(jnp.sum(masked), den)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"aggregate_loss: unknown loss_agg_mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    if num_seqs is None or (mode == "seq-mean-token-sum-norm" and horizon is None):
        raise ValueError(f"aggregate_loss: packed rows need num_seqs (and horizon) for {mode!r}")
    den = _f32(num_seqs)
    if mode == "seq-mean-token-mean":
        return _safe_div(jnp.sum(_safe_div(masked, row_tokens)), den)
    total = _safe_div(jnp.sum(masked), den)
    return total / float(horizon) if mode == "seq-mean-token-sum-norm" else total


def packed_num_seqs(mask: jax.Array, row_tokens: jax.Array) -> jax.Array:
    """Rows with >= 1 masked token in a packed batch: each row's tokens carry 1 / n_row and sum to 1."""
    return jnp.round(jnp.sum(_safe_div(_f32(mask), _f32(row_tokens))))


def sft_loss(
    token_logprobs: jax.Array, mask: jax.Array, *, num_tokens: jax.Array | float | None = None
) -> jax.Array:
    """Token-mean cross-entropy over response tokens incl. EOS (SPEC.md, stage ``seqkd`` / warmup G).

    L = - sum_{b,t} mask * log p(y_t) / sum mask.  ``token_logprobs`` [B, R] are the log-probs of the
    teacher tokens (``logprobs.response_logprobs``); ``mask`` [B, R] is the response mask.
    """
    return aggregate_loss(-_f32(token_logprobs), mask, "token-mean", num_tokens=num_tokens)


def _pair_scores(
    student_scores: jax.Array, teacher_scores: jax.Array, n: int, pair_mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    s, t = _f32(student_scores), _f32(teacher_scores)
    if s.ndim != 1 or t.ndim != 1 or s.shape[0] != t.shape[0] * n:
        raise ValueError(
            f"discriminator loss: student_scores {s.shape} must be [B*N] and teacher_scores {t.shape} [B] "
            f"with N={n}"
        )
    s = s.reshape(t.shape[0], n)  # prompt i's samples are rows i*N .. i*N+N-1 (HELPERS.md)
    m = jnp.ones_like(s) if pair_mask is None else _f32(pair_mask).reshape(t.shape[0], n)
    return s, t, m


def _per_prompt_mean(x: jax.Array, m: jax.Array) -> jax.Array:
    """Mean over prompts (with >= 1 valid pair) of the mean over that prompt's valid pairs."""
    per_prompt = _safe_div(jnp.sum(x * m, axis=1), jnp.sum(m, axis=1))
    valid = (jnp.sum(m, axis=1) > 0).astype(jnp.float32)
    return _safe_div(jnp.sum(per_prompt * valid), jnp.sum(valid))


def _d_metrics(s: jax.Array, t: jax.Array, m: jax.Array) -> dict[str, jax.Array]:
    valid_prompt = (jnp.sum(m, axis=1) > 0).astype(jnp.float32)
    return {
        "d_acc": masked_mean((t[:, None] > s).astype(jnp.float32), m),
        "teacher_score_mean": masked_mean(t, valid_prompt),
        "student_score_mean": masked_mean(s, m),
    }


def bradley_terry_loss(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    n: int,
    *,
    pair_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley-Terry discriminator loss (SPEC.md "Objective"; paper eq. for L_D).

        L_D = mean_prompts mean_i softplus( D(x, y_s^i) - D(x, y_t) )  = -log sigmoid(D(t) - D(s_i))

    ``D(x, y_t)`` is computed once per prompt and broadcast to its N pairs, so its gradient is the sum
    over the N pairs (it appears in every pair). Minimising pushes D(t) up and D(s) down.

    Args:
      student_scores: [B*N] D scores of the student samples, prompt i at rows i*N .. i*N+N-1.
      teacher_scores: [B] D scores of the teacher responses.
      n: samples per prompt N (static).
      pair_mask: optional [B*N] 1 for real pairs (e.g. 0 for batch padding); prompts with no real pair
        are excluded from the mean.
    Returns:
      (loss, metrics) with metrics ``d_acc`` (fraction of pairs with D(t) > D(s)), ``teacher_score_mean``,
      ``student_score_mean`` (SPEC.md "Metrics D must log").
    """
    s, t, m = _pair_scores(student_scores, teacher_scores, n, pair_mask)
    loss = _per_prompt_mean(jax.nn.softplus(s - t[:, None]), m)
    return loss, _d_metrics(s, t, m)


def bce_discriminator_loss(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    n: int,
    *,
    pair_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Binary cross-entropy discriminator loss: the paper's ablation of the BT loss (SPEC.md, Qwen2.5-3B
    "BT loss vs binary cross-entropy D loss").

    D's score is a logit; the teacher response has label 1 and each student sample label 0:

        L_D = mean_prompts [ softplus(-D(x, y_t)) + mean_i softplus(D(x, y_s^i)) ]

    i.e. the standard GAN discriminator loss -E log sigmoid(D(real)) - E log(1 - sigmoid(D(fake))), with
    the teacher term counted once per prompt (not once per pair). Same arguments and metrics as
    ``bradley_terry_loss``.
    """
    s, t, m = _pair_scores(student_scores, teacher_scores, n, pair_mask)
    per_pair = jax.nn.softplus(-t)[:, None] + jax.nn.softplus(s)
    loss = _per_prompt_mean(per_pair, m)
    return loss, _d_metrics(s, t, m)


def ppo_clip_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    horizon: float | None = None,
    num_tokens: jax.Array | float | None = None,
    num_seqs: jax.Array | float | None = None,
    row_tokens: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate with dual clip, exactly verl's ``compute_policy_loss_vanilla``.

        ratio = exp(clamp(logp - old_logp, -20, 20))
        L1 = -A * ratio,  L2 = -A * clip(ratio, 1 - eps_low, 1 + eps_high),  Lc = max(L1, L2)
        L  = min(-A * c, Lc) if A < 0 else Lc          (dual clip, Ye et al. 2020, arXiv 1912.09729)

    then aggregated with ``loss_agg_mode`` (SPEC.md: token-mean, eps 0.2, c 3.0). With one optimizer
    step per rollout batch, logp == old_logp and the clip is inactive (SPEC.md).

    Args:
      logp: [B, T] log-probs of the sampled tokens under the current policy (differentiated).
      old_logp: [B, T] log-probs under the rollout policy (treated as constants).
      advantages: [B, T] per-token advantages, or [B] per-sequence (broadcast over T).
      mask: [B, T] response mask.
      row_tokens: packed rows, see ``aggregate_loss``.
    Returns:
      (loss, metrics) with verl's metric names: ``pg_clipfrac`` (fraction of tokens where the eps clip
      binds), ``pg_clipfrac_lower`` (dual clip binds, A < 0), ``ppo_kl`` (masked mean of old_logp - logp,
      an approximate KL), and ``ratio_mean`` (masked mean ratio).
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"ppo_clip_loss: clip_ratio_c must be > 1.0 for dual-clip PPO, got {clip_ratio_c}")
    eps_low = clip_eps if clip_eps_low is None else clip_eps_low
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    logp, old_logp, mask = _f32(logp), jax.lax.stop_gradient(_f32(old_logp)), _f32(mask)
    adv = jax.lax.stop_gradient(_f32(advantages))
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)

    neg_approx_kl = jnp.clip(logp - old_logp, -20.0, 20.0)
    ratio = jnp.exp(neg_approx_kl)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clip_pg_losses1 = jnp.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv * clip_ratio_c
    clip_pg_losses2 = jnp.minimum(pg_losses3, clip_pg_losses1)
    pg_losses = jnp.where(adv < 0, clip_pg_losses2, clip_pg_losses1)

    loss = aggregate_loss(
        pg_losses,
        mask,
        loss_agg_mode,
        horizon=horizon,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        row_tokens=row_tokens,
    )
    metrics = {
        "pg_clipfrac": masked_mean((pg_losses2 > pg_losses1).astype(jnp.float32), mask),
        "pg_clipfrac_lower": masked_mean(
            ((clip_pg_losses1 > pg_losses3) & (adv < 0)).astype(jnp.float32), mask
        ),
        "ppo_kl": jax.lax.stop_gradient(masked_mean(-neg_approx_kl, mask)),
        "ratio_mean": jax.lax.stop_gradient(masked_mean(ratio, mask)),
    }
    return loss, metrics
