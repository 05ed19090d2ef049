"""Forward passes over concat(prompt, response), no gradients: per-token response log-probs (the policy's
and the frozen reference's, at the rollout temperature) and the discriminator's score at the last valid
token; and the interleaved micro-batch split both they and gadjax.algo.steps (the train steps) use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.algo.logprobs import response_logprobs

Batch = dict[str, jax.Array]


def split_micro(tree: Any, m: int) -> Any:
    """[B, ...] -> [M, B/M, ...] with micro-batch k = rows k, k+M, k+2M, ... (stays shard-local)."""

    def one(x):
        b = x.shape[0]
        if b % m:
            raise ValueError(f"batch of {b} rows does not split into micro_batches={m}")
        return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)

    return jax.tree.map(one, tree)


# --- sequence helpers ------------------------------------------------------------------------------


def concat_sequence(prompt_ids, prompt_mask, response_ids, response_mask) -> tuple[jax.Array, ...]:
    """ids, mask, positions of concat(prompt, response) (prompt LEFT-padded, response RIGHT-padded)."""
    ids = jnp.concatenate([prompt_ids, response_ids], axis=1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


def sequence_logprobs(
    model: nnx.Module,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    response_ids: jax.Array,
    response_mask: jax.Array,
    *,
    chunk_size: int,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs [B, R] (float32) of the response tokens under `model` (a Decoder), chunked over time,
    of the distribution softmax(logits / temperature)."""
    ids, mask, pos = concat_sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    hidden, _ = model(ids, pos, mask)
    return response_logprobs(
        hidden,
        model.output_embedding(),
        response_ids,
        prompt_ids.shape[1],
        head_layout="hv",
        chunk_size=chunk_size,
        compute_dtype=model.dtype,
        return_entropy=return_entropy,
        temperature=temperature,
    )


def sequence_scores(model: nnx.Module, prompt_ids, prompt_mask, response_ids, response_mask) -> jax.Array:
    """Discriminator scores [B] of concat(prompt, response) at the last valid token."""
    ids, mask, pos = concat_sequence(prompt_ids, prompt_mask, response_ids, response_mask)
    return model(ids, pos, mask)


# --- micro-batching and the shared update ----------------------------------------------------------


# --- forward-only helpers --------------------------------------------------------------------------


def make_logprob_fn(
    graphdef: nnx.GraphDef, *, chunk_size: int = 256, micro_batches: int = 1, temperature: float = 1.0
) -> Callable[[Any, Batch], jax.Array]:
    """(params, batch) -> response log-probs [B, R]: the frozen reference's log-probs for the KL term,
    at the rollout ``temperature`` like the policy step's (SPEC.md "Temperature").

    With micro_batches > 1 the rows run in interleaved slices (lax.map), so activations are those of one
    slice, as in the policy step."""

    def one(params: Any, batch: Batch) -> jax.Array:
        # LoRA: params = (adapters, frozen base), see gadjax.trainer.adapters.
        model = nnx.merge(graphdef, *params) if isinstance(params, tuple) else nnx.merge(graphdef, params)
        logp, _ = sequence_logprobs(
            model,
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["response_ids"],
            batch["response_mask"],
            chunk_size=chunk_size,
            temperature=temperature,
        )
        return logp

    def fn(params: Any, batch: Batch) -> jax.Array:
        if micro_batches == 1:
            return one(params, batch)
        rows = jax.lax.map(lambda mb: one(params, mb), split_micro(batch, micro_batches))  # [M, B/M, R]
        return jnp.swapaxes(rows, 0, 1).reshape(-1, rows.shape[-1])  # undo the interleaved split

    return fn


def make_score_fn(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], jax.Array]:
    """(params, batch) -> discriminator scores [B] of concat(prompt, response); with LoRA params is
    (adapters + head, frozen base), as in make_logprob_fn."""

    def fn(params: Any, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, *params) if isinstance(params, tuple) else nnx.merge(graphdef, params)
        return sequence_scores(
            model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"]
        )

    return fn
