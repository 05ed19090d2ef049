"""GAD algorithm math: losses, advantages, KL estimators, chunked log-probs, optimizer (SPEC.md)."""

from gadjax.algo.advantages import broadcast_to_tokens, grpo_advantages
from gadjax.algo.kl import KL_KINDS, kl_loss, kl_penalty
from gadjax.algo.logprobs import logprobs_from_logits, response_logprobs, token_logprobs
from gadjax.algo.losses import (
    LOSS_AGG_MODES,
    aggregate_loss,
    bce_discriminator_loss,
    bradley_terry_loss,
    masked_mean,
    ppo_clip_loss,
    sft_loss,
)
from gadjax.algo.optim import current_lr, make_optimizer, make_schedule, no_norm_bias_mask

__all__ = [
    "KL_KINDS",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "bce_discriminator_loss",
    "bradley_terry_loss",
    "broadcast_to_tokens",
    "current_lr",
    "grpo_advantages",
    "kl_loss",
    "kl_penalty",
    "logprobs_from_logits",
    "make_optimizer",
    "make_schedule",
    "masked_mean",
    "no_norm_bias_mask",
    "ppo_clip_loss",
    "response_logprobs",
    "sft_loss",
    "token_logprobs",
]
