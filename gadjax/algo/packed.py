"""The score and train passes over PACKED rows (``train.packing``): the same losses as gadjax.algo.steps,
without the padding.

A packed batch (laid out on the host by gadjax.data.packing) is [M, rows, pack_length] per array: M
micro-batches of one shape, scanned one after another, so memory is that of one micro-batch whatever the
lengths. Micro-batches that hold no row (the tail of a power-of-two bucket) are skipped with a
conditional: they cost a predicate, not a forward pass. Every loss is normalised by GLOBAL counts (tokens,
sequences, prompts) of the whole batch, so the micro-batch losses and gradients sum to the padded
layout's (gadjax.algo.steps); tests/algo/test_packed.py holds the two layouts to 1e-5.

- log-probs: the LM head runs on every packed position; ``targets`` is the next token of the same row and
  ``loss_mask`` marks the positions that predict a response token (SPEC.md "G loss", at the rollout
  temperature), so per-token log-probs, entropy, ratios and KL are the padded layout's, position by
  position; the seq-mean loss modes weigh each token by its row's length (``row_tokens``).
- discriminator: the score is the head at each row's last token (``ends``), then a group's teacher row
  and its N samples (``groups``, always in one micro-batch) enter the Bradley-Terry / BCE loss as in the
  padded step (SPEC.md L_D), weighted by the micro-batch's share of the prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gadjax.algo.logprobs import token_logprobs
from gadjax.algo.losses import (
    bce_discriminator_loss,
    bradley_terry_loss,
    packed_num_seqs,
    sft_loss,
)
from gadjax.algo.steps import (
    Batch,
    Metrics,
    PolicyLossConfig,
    TrainState,
    _apply_update,
    _model,
    apply_policy_update,
    policy_objective,
)


def packed_logprobs(
    model: nnx.Module,
    mb: Batch,
    *,
    chunk_size: int,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs [S, L] (float32) of each packed position's ``targets`` under softmax(logits / temperature)
    (and the entropy); only the ``loss_mask`` positions mean anything."""
    seg = mb["segments"]
    hidden, _ = model(mb["ids"], mb["positions"], seg > 0, segment_ids=seg)
    return token_logprobs(
        hidden,
        model.output_embedding(),
        mb["targets"],
        head_layout="hv",
        chunk_size=chunk_size,
        compute_dtype=model.dtype,
        return_entropy=return_entropy,
        temperature=temperature,
    )


def micro_flags(batch: Batch) -> jax.Array:
    """[M] bool: which micro-batches hold a row. Reduced once, before the scan, and replicated, so every
    device takes the same branch of the skip (a conditional around collectives must agree everywhere)."""
    flags = jnp.any(batch["segments"] > 0, axis=(1, 2))
    if not jax.sharding.get_abstract_mesh().empty:
        flags = jax.lax.with_sharding_constraint(flags, jax.sharding.PartitionSpec())
    return flags


def _zeros(shapes: Any) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def scan_micro(
    loss_fn: Callable[[Any, Batch], tuple[jax.Array, Metrics]],
    params: Any,
    batch: Batch,
    *,
    row_keys: tuple[str, ...] = (),
    grads: bool = True,
) -> tuple[jax.Array, Any, Metrics, Metrics]:
    """Sum of loss, grads (None if ``grads`` is False) and metrics over the M micro-batches of a packed
    batch, skipping empty ones; the metrics named in ``row_keys`` come back stacked [M, ...] instead."""
    if grads:
        fn = jax.value_and_grad(loss_fn, has_aux=True)
    else:
        fn = lambda p, b: (loss_fn(p, b), None)  # noqa: E731
    first = jax.tree.map(lambda x: x[0], batch)
    zeros = _zeros(jax.eval_shape(fn, params, first))

    def body(carry, xs):
        mb, run = xs
        (loss, metrics), g = jax.lax.cond(run, lambda b: fn(params, b), lambda b: zeros, mb)
        metrics = dict(metrics)
        rows = {k: metrics.pop(k) for k in row_keys}
        return jax.tree.map(jnp.add, carry, (loss, metrics, g)), rows

    (_, m0), g0 = zeros
    init = (jnp.zeros((), jnp.float32), {k: v for k, v in m0.items() if k not in row_keys}, g0)
    (loss, metrics, g), rows = jax.lax.scan(body, init, (batch, micro_flags(batch)))
    return loss, g, metrics, rows


# --- SFT ---------------------------------------------------------------------------------------------


def make_packed_sft_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, chunk_size: int = 256
) -> Callable[..., tuple[TrainState, Metrics]]:
    """gadjax.algo.steps.make_sft_step on packed rows: token-mean NLL of the response (SPEC.md seqkd)."""

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng
        num_tokens = jnp.sum(batch["loss_mask"])

        def loss_fn(params, b):
            logp, _ = packed_logprobs(_model(graphdef, params, frozen), b, chunk_size=chunk_size)
            loss = sft_loss(logp, b["loss_mask"], num_tokens=num_tokens)
            return loss, {"sft_nll_sum": -jnp.sum(logp * b["loss_mask"])}

        loss, grads, _, _ = scan_micro(loss_fn, state.params, batch)
        return _apply_update(state, loss, grads, optimizer, sft_loss=loss, sft_tokens=num_tokens)

    return step


# --- discriminator -----------------------------------------------------------------------------------


def make_packed_discriminator_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    n_samples: int,
    loss_type: str = "bradley_terry",
    update: bool = True,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """gadjax.algo.steps.make_discriminator_step on packed groups (teacher row + its N samples).

    Returns metrics incl. ``row_scores`` [M, rows, slots]: every row's score under the PRE-update D (the
    GRPO rewards); gadjax.data.packing.Packing.row_values puts them back in row order."""
    losses = {"bradley_terry": bradley_terry_loss, "bce": bce_discriminator_loss}
    if loss_type not in losses:
        raise ValueError(f"discriminator loss_type={loss_type!r}: expected one of {sorted(losses)}")
    d_loss_fn, n = losses[loss_type], n_samples

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng
        b_prompts = jnp.sum(batch["group_valid"])

        def loss_fn(params, b):
            model = _model(graphdef, params, frozen)
            scores = model.scores_at(b["ids"], b["positions"], b["segments"], b["ends"])  # [S, J]
            grouped = scores.reshape(-1)[b["groups"]]  # [G, 1 + N]: teacher first
            valid = b["group_valid"]
            loss, m = d_loss_fn(grouped[:, 1:].reshape(-1), grouped[:, 0], n, pair_mask=jnp.repeat(valid, n))
            w = jnp.sum(valid) / b_prompts  # the padded step's global-prompt normalisation
            return loss * w, {
                "d_acc": m["d_acc"] * w,
                "teacher_score_mean": m["teacher_score_mean"] * w,
                "student_score_mean": m["student_score_mean"] * w,
                "row_scores": scores,
            }

        loss, grads, aux, rows = scan_micro(
            loss_fn, state.params, batch, row_keys=("row_scores",), grads=update
        )
        metrics = dict(d_loss=loss, **aux, row_scores=rows["row_scores"])
        if not update:
            return state, metrics
        return _apply_update(state, loss, grads, optimizer, **metrics)

    return step


# --- policy ------------------------------------------------------------------------------------------


def make_packed_policy_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_cfg: PolicyLossConfig,
    *,
    horizon: float,
    chunk_size: int = 256,
    temperature: float = 1.0,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """gadjax.algo.steps.make_policy_step on packed rows (PPO clip + beta * KL(k3), SPEC.md "G loss").

    batch (per token, [M, rows, pack_length]): the packed arrays plus ``advantages`` (each row's GRPO
    advantage on its loss positions), ``ref_logprobs`` and optionally ``old_logprobs``. ``horizon`` is the
    padded response width, the ``seq-mean-token-sum-norm`` constant of the padded step."""
    cfg = loss_cfg

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng
        num_tokens = jnp.sum(batch["loss_mask"])
        num_seqs = packed_num_seqs(batch["loss_mask"], batch["row_tokens"])

        def loss_fn(params, b):
            model = _model(graphdef, params, frozen)
            logp, entropy = packed_logprobs(
                model, b, chunk_size=chunk_size, return_entropy=True, temperature=temperature
            )
            agg = dict(
                loss_agg_mode=cfg.loss_agg_mode,
                horizon=horizon,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                row_tokens=b["row_tokens"],
            )
            return policy_objective(logp, entropy, b, b["loss_mask"], cfg, agg)

        loss, grads, aux, _ = scan_micro(loss_fn, state.params, batch)
        return apply_policy_update(state, loss, grads, optimizer, aux, num_tokens)

    return step


# --- forward only --------------------------------------------------------------------------------------


def make_packed_logprob_fn(
    graphdef: nnx.GraphDef, *, chunk_size: int = 256, temperature: float = 1.0
) -> Callable[[Any, Batch], jax.Array]:
    """(params, packed batch) -> per-position log-probs [M, rows, pack_length] at the rollout temperature
    (the frozen reference's, for the KL term); empty micro-batches give zeros without a forward pass."""

    def fn(params: Any, batch: Batch) -> jax.Array:
        def one(mb: Batch) -> jax.Array:
            # LoRA: params = (adapters, frozen base), see gadjax.trainer.adapters.
            parts = params if isinstance(params, tuple) else (params,)
            model = nnx.merge(graphdef, *parts)
            return packed_logprobs(model, mb, chunk_size=chunk_size, temperature=temperature)[0]

        zero = lambda mb: jnp.zeros(mb["targets"].shape, jnp.float32)  # noqa: E731
        return jax.lax.map(lambda xs: jax.lax.cond(xs[1], one, zero, xs[0]), (batch, micro_flags(batch)))

    return fn
