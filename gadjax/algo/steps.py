"""Pure train steps: `(state, batch, rng) -> (state, metrics)` for SFT, the discriminator and the policy.

Each step takes a `TrainState` (params + optax state + step count, a pytree), a batch of arrays laid out
as in the data pipeline (prompt LEFT-padded [B, P], response RIGHT-padded [B, R]; the model sees
concat(prompt, response) so every response starts at column P), and returns the new state and float32
metrics. The model's graph definition, optimizer and hyperparameters are closed over when the step is
built (`make_*_step`), so the jitted function is pure in its arguments and the state can be donated.

Gradient accumulation: the batch is split into `micro_batches` interleaved slices (row k, k+M, ... so each
slice keeps rows on every data shard) and scanned; every micro-batch loss is normalised by the GLOBAL
count of tokens (or prompts) of the whole batch, so the summed gradient equals the full-batch gradient,
weighted by real token counts (levanter's grad_accum, verl's agg_loss with global token counts).

LoRA (gadjax.models.lora): `state.params` holds only the trainable adapters (and D's head), and the step
takes the frozen base as a fourth argument `frozen` (not donated, never differentiated); None = full
fine-tuning, as before.

Non-finite guard: if the loss or the gradient norm is not finite, the update is skipped (params and
optimizer state unchanged, step count still advances) and `skipped` = 1 is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gadjax.algo.advantages import grpo_advantages
from gadjax.algo.kl import kl_loss
from gadjax.algo.losses import bce_discriminator_loss, bradley_terry_loss, ppo_clip_loss, sft_loss
from gadjax.algo.optim import current_lr
from gadjax.algo.sequences import (
    concat_sequence,
    make_logprob_fn,
    make_score_fn,
    sequence_logprobs,
    sequence_scores,
    split_micro,
)

__all__ = [
    "Batch",
    "Metrics",
    "PolicyLossConfig",
    "TrainState",
    "concat_sequence",
    "group_advantages",
    "make_discriminator_step",
    "make_logprob_fn",
    "make_policy_step",
    "make_score_fn",
    "make_sft_step",
    "sequence_logprobs",
    "sequence_scores",
    "split_micro",
]

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a model's training carries between steps (graphdef lives outside, static)."""

    step: jax.Array
    params: Any  # nnx.State of Params
    opt_state: Any

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """SPEC.md "G loss" settings (verl names)."""

    clip_eps: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    kl_beta: float = 0.001
    kl_kind: str = "low_var_kl"
    entropy_coeff: float = 0.0


def _accumulate(
    loss_fn: Callable[[Any, Batch], tuple[jax.Array, Metrics]],
    params: Any,
    batch: Batch,
    micro_batches: int,
    row_keys: tuple[str, ...] = (),
) -> tuple[jax.Array, Any, Metrics]:
    """Sum of loss and grads over micro-batches (loss_fn normalises by global counts); metrics summed,
    except the per-row outputs named in `row_keys`, which are re-assembled in batch order."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        (loss, metrics), grads = grad_fn(params, batch)
        return loss, grads, metrics

    def body(carry, micro):
        (loss, metrics), grads = grad_fn(params, micro)
        rows = {k: metrics.pop(k) for k in row_keys}
        acc_loss, acc_grads, acc_metrics = carry
        return (
            acc_loss + loss,
            jax.tree.map(jnp.add, acc_grads, grads),
            jax.tree.map(jnp.add, acc_metrics, metrics),
        ), rows

    micro = split_micro(batch, micro_batches)
    first = jax.tree.map(lambda x: x[0], micro)
    metrics_shape = jax.eval_shape(lambda: loss_fn(params, first)[1])
    for k in row_keys:
        metrics_shape.pop(k)
    zeros = (
        jnp.zeros((), jnp.float32),
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(jnp.zeros_like, metrics_shape),
    )
    (loss, grads, metrics), rows = jax.lax.scan(body, zeros, micro)
    # rows [M, B/M, ...] -> undo the interleaved split of split_micro -> [B, ...]
    for k, r in rows.items():
        metrics[k] = jnp.swapaxes(r, 0, 1).reshape(-1, *r.shape[2:])
    return loss, grads, metrics


def _apply_update(
    state: TrainState,
    loss: jax.Array,
    grads: Any,
    optimizer: optax.GradientTransformation,
    **extra: jax.Array,
) -> tuple[TrainState, Metrics]:
    """Optimizer update, skipped (state kept) when the loss or gradients are not finite. Metrics: loss,
    grad_norm, skipped, lr, then the step's own `extra` metrics."""
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params_and_opt):
        params, opt_state = params_and_opt
        updates, new_opt = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    # A conditional, not a where(ok, new, old) over the trees: the where reads the old params and
    # moments after the new ones are computed, so XLA cannot update the donated buffers in place and
    # copies both moments every step (bench/train_step.py --breakdown, "update").
    new_params, new_opt = jax.lax.cond(ok, update, lambda po: po, (state.params, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt)
    return new_state, {
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped": (~ok).astype(jnp.float32),
        "lr": current_lr(new_opt).astype(jnp.float32),  # a skipped step: the last applied update's
        **extra,
    }


def _model(graphdef: nnx.GraphDef, params: Any, frozen: Any) -> nnx.Module:
    """The model from its trainable params and, for LoRA, the frozen base (never differentiated)."""
    return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


def _sequence_inputs(b: Batch) -> tuple[jax.Array, ...]:
    """(prompt_ids, prompt_mask, response_ids, response_mask): the sequence arguments of
    `sequence_logprobs` / `sequence_scores`."""
    return b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"]


# --- SFT (seqkd, and G's warmup) -------------------------------------------------------------------


def make_sft_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    micro_batches: int = 1,
    chunk_size: int = 256,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Token-mean cross-entropy of the teacher response (incl. EOS) given the prompt (SPEC.md seqkd)."""

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng  # deterministic
        num_tokens = jnp.sum(batch["response_mask"]).astype(jnp.float32)

        def loss_fn(params, b):
            model = _model(graphdef, params, frozen)
            logp, _ = sequence_logprobs(model, *_sequence_inputs(b), chunk_size=chunk_size)
            loss = sft_loss(logp, b["response_mask"], num_tokens=num_tokens)
            return loss, {"sft_nll_sum": -jnp.sum(logp * b["response_mask"])}

        loss, grads, _ = _accumulate(loss_fn, state.params, batch, micro_batches)
        return _apply_update(state, loss, grads, optimizer, sft_loss=loss, sft_tokens=num_tokens)

    return step


# --- discriminator ---------------------------------------------------------------------------------


def make_discriminator_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    n_samples: int,
    loss_type: str = "bradley_terry",
    micro_batches: int = 1,
    update: bool = True,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """One D update on (prompt, teacher response) vs the prompt's N student samples (SPEC.md L_D).

    ``update=False`` scores and measures without training (a frozen D used as a fixed reward model: the
    paper's off-policy ablation); the state comes back unchanged and no gradient is computed.

    batch: prompt_ids/prompt_mask [B, P], response_ids/response_mask [B, R] (teacher),
    student_ids/student_mask [B*N, R_s] (prompt i's samples at rows i*N .. i*N+N-1).
    Returns metrics incl. `student_scores` [B*N]: D(x, y_s) under the PRE-update D, which are exactly the
    GRPO rewards SPEC.md asks for (no second forward needed).
    """
    losses = {"bradley_terry": bradley_terry_loss, "bce": bce_discriminator_loss}
    if loss_type not in losses:
        raise ValueError(f"discriminator loss_type={loss_type!r}: expected one of {sorted(losses)}")
    d_loss_fn = losses[loss_type]
    n = n_samples

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng
        b_prompts = batch["prompt_ids"].shape[0]
        grouped = dict(batch)
        grouped["student_ids"] = batch["student_ids"].reshape(b_prompts, n, -1)
        grouped["student_mask"] = batch["student_mask"].reshape(b_prompts, n, -1)

        def loss_fn(params, b):
            model = _model(graphdef, params, frozen)
            bp = b["prompt_ids"].shape[0]
            t = sequence_scores(model, *_sequence_inputs(b))
            rep = lambda x: jnp.repeat(x, n, axis=0)
            s = sequence_scores(
                model,
                rep(b["prompt_ids"]),
                rep(b["prompt_mask"]),
                b["student_ids"].reshape(bp * n, -1),
                b["student_mask"].reshape(bp * n, -1),
            )
            loss, m = d_loss_fn(s, t, n)
            # Normalise by the global prompt count so micro-batch losses sum to the batch loss.
            w = bp / b_prompts
            return loss * w, {
                "d_acc": m["d_acc"] * w,
                "teacher_score_mean": m["teacher_score_mean"] * w,
                "student_score_mean": m["student_score_mean"] * w,
                "student_scores": s.reshape(bp, n),
            }

        d_metrics = lambda loss, aux: dict(
            d_loss=loss,
            d_acc=aux["d_acc"],
            teacher_score_mean=aux["teacher_score_mean"],
            student_score_mean=aux["student_score_mean"],
            student_scores=aux["student_scores"].reshape(-1),
        )
        if not update:
            loss, aux = loss_fn(state.params, grouped)
            return state, d_metrics(loss, aux)
        loss, grads, aux = _accumulate(
            loss_fn, state.params, grouped, micro_batches, row_keys=("student_scores",)
        )
        return _apply_update(state, loss, grads, optimizer, **d_metrics(loss, aux))

    return step


# --- policy (GRPO with the discriminator's reward) -------------------------------------------------


def policy_objective(
    logp: jax.Array, entropy: jax.Array, b: Batch, mask: jax.Array, cfg: PolicyLossConfig, agg: dict
) -> tuple[jax.Array, Metrics]:
    """One micro-batch's GRPO loss (SPEC.md "G loss"): PPO clipped surrogate + kl_beta * KL to the
    reference (- entropy_coeff * entropy), aggregated by ``agg`` (aggregate_loss's keywords, with the
    global token count); and token-weighted sums of its metrics, divided by the global count by the
    caller. Shared by the padded and the packed (gadjax.algo.packed) policy steps."""
    old = b["old_logprobs"] if "old_logprobs" in b else jax.lax.stop_gradient(logp)
    pg_loss, pg_m = ppo_clip_loss(
        logp, old, b["advantages"], mask, clip_eps=cfg.clip_eps, clip_ratio_c=cfg.clip_ratio_c, **agg
    )
    kl = kl_loss(logp, b["ref_logprobs"], mask, kind=cfg.kl_kind, **agg)
    loss = pg_loss + cfg.kl_beta * kl
    ent_sum = jnp.sum(entropy * mask)
    if cfg.entropy_coeff:
        loss = loss - cfg.entropy_coeff * ent_sum / agg["num_tokens"]
    ntok = jnp.sum(mask)
    return loss, {
        "pg_loss": pg_loss,
        "kl_loss": kl,
        "entropy_sum": jax.lax.stop_gradient(ent_sum),
        "pg_clipfrac_sum": pg_m["pg_clipfrac"] * ntok,
        "pg_clipfrac_lower_sum": pg_m["pg_clipfrac_lower"] * ntok,
        "ppo_kl_sum": pg_m["ppo_kl"] * ntok,
    }


def apply_policy_update(
    state: TrainState,
    loss: jax.Array,
    grads: Any,
    optimizer: optax.GradientTransformation,
    aux: Metrics,
    num_tokens: jax.Array,
) -> tuple[TrainState, Metrics]:
    """The optimizer update of a policy step and its metrics: policy_objective's token-weighted sums
    (summed over micro-batches) divided by the step's token count."""
    den = jnp.maximum(num_tokens, 1.0)
    return _apply_update(
        state,
        loss,
        grads,
        optimizer,
        pg_loss=aux["pg_loss"],
        kl_loss=aux["kl_loss"],
        entropy=aux["entropy_sum"] / den,
        pg_clipfrac=aux["pg_clipfrac_sum"] / den,
        pg_clipfrac_lower=aux["pg_clipfrac_lower_sum"] / den,
        ppo_kl=aux["ppo_kl_sum"] / den,
        response_tokens=num_tokens,
    )


def make_policy_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_cfg: PolicyLossConfig,
    *,
    micro_batches: int = 1,
    chunk_size: int = 256,
    temperature: float = 1.0,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """PPO clipped surrogate + beta * KL(k3) to the reference, token-mean (SPEC.md "G loss").

    ``temperature`` is the rollout temperature: the current (and so the old) log-probs are those of
    softmax(logits / temperature), the distribution the samples came from (SPEC.md "Temperature"); the
    reference log-probs in the batch must use the same temperature (make_logprob_fn).

    batch: prompt_ids/prompt_mask [B*N, P] (each prompt repeated N times), response_ids/response_mask
    [B*N, R] (the student's samples), advantages [B*N], ref_logprobs [B*N, R]; optional old_logprobs
    [B*N, R]. Without old_logprobs, the rollout policy is the current one (one optimizer step per rollout
    batch, SPEC.md), so old = stop_gradient(current) exactly and the ratio is 1.
    """
    cfg = loss_cfg

    def step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        del rng
        mask_all = batch["response_mask"].astype(jnp.float32)
        num_tokens = jnp.sum(mask_all)
        num_seqs = jnp.sum((jnp.sum(mask_all, axis=1) > 0).astype(jnp.float32))
        horizon = float(batch["response_ids"].shape[1])

        def loss_fn(params, b):
            model = _model(graphdef, params, frozen)
            logp, entropy = sequence_logprobs(
                model,
                *_sequence_inputs(b),
                chunk_size=chunk_size,
                return_entropy=True,
                temperature=temperature,
            )
            mask = b["response_mask"].astype(jnp.float32)
            agg = dict(
                loss_agg_mode=cfg.loss_agg_mode, horizon=horizon, num_tokens=num_tokens, num_seqs=num_seqs
            )
            return policy_objective(logp, entropy, b, mask, cfg, agg)

        loss, grads, aux = _accumulate(loss_fn, state.params, batch, micro_batches)
        return apply_policy_update(state, loss, grads, optimizer, aux, num_tokens)

    return step


def group_advantages(rewards: jax.Array, n: int, norm_by_std: bool = True) -> tuple[jax.Array, Metrics]:
    """GRPO advantages from rewards [B*N] (``norm_by_std=False``: Dr.GRPO's, not divided by the group's
    std) plus reward / advantage statistics for the logs."""
    adv = grpo_advantages(rewards, n, norm_by_std=norm_by_std)
    r = rewards.astype(jnp.float32)
    return adv, {
        "reward_mean": jnp.mean(r),
        "reward_std": jnp.std(r),
        "advantage_mean": jnp.mean(adv),
        "advantage_abs_mean": jnp.mean(jnp.abs(adv)),
        "advantage_max": jnp.max(adv),
        "advantage_min": jnp.min(adv),
    }
