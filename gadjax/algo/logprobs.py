"""Per-token log-probs (and entropy) of target tokens without materialising [B, T, V] float32 at once.

The LM head matmul runs chunk by chunk over the time axis (``jax.lax.map`` over chunks of
``chunk_size`` positions), each chunk under ``jax.checkpoint`` so the backward pass recomputes that
chunk's logits instead of storing every chunk's [B, C, V] residuals: peak logits memory is one
[B, C, V] float32 block forward and backward. A sequence that fits one chunk is not checkpointed:
there is nothing to save by recomputing it. The matmul may run in a compute dtype (bf16) with float32
accumulation; the log-softmax is always float32 (SPEC.md: weights fp32, compute bf16, loss math fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

Head = jax.Array | Callable[[jax.Array], jax.Array]


def _logits(hidden: jax.Array, head: Head, layout: str, compute_dtype) -> jax.Array:
    """[..., H] -> [..., V] float32 logits."""
    if callable(head):
        return jnp.asarray(head(hidden)).astype(jnp.float32)
    cd = compute_dtype if compute_dtype is not None else hidden.dtype
    h, w = hidden.astype(cd), head.astype(cd)
    eq = "...h,vh->...v" if layout == "vh" else "...h,hv->...v"
    return jnp.einsum(eq, h, w, preferred_element_type=jnp.float32).astype(jnp.float32)


def logprobs_from_logits(
    logits: jax.Array, targets: jax.Array, *, return_entropy: bool = False
) -> tuple[jax.Array, jax.Array | None]:
    """log softmax(logits)[target] and the categorical entropy, in float32 (the unchunked form).

    ``targets`` out of [0, V) are clipped into range (callers mask those positions anyway).
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    logp = tgt - lse
    if not return_entropy:
        return logp, None
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logp, entropy


def token_logprobs(
    hidden: jax.Array,
    head: Head,
    targets: jax.Array,
    *,
    chunk_size: int = 256,
    head_layout: Literal["vh", "hv"] = "vh",
    compute_dtype=None,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array | None]:
    """log p(targets[b, t] | hidden[b, t]) for every position, chunked over time.

    Args:
      hidden: [B, T, H] final hidden states (after the final norm).
      head: the output projection, either an array ``[V, H]`` (``head_layout="vh"``: a tied embedding
        table, or a torch-layout lm_head weight) or ``[H, V]`` (``head_layout="hv"``: an nnx.Linear
        kernel), or a callable ``hidden_chunk [B, C, H] -> logits [B, C, V]`` (e.g. ``model.logits``).
        The layout must be given: it cannot be inferred when V == H.
      targets: [B, T] int token ids predicted at each position.
      chunk_size: positions per chunk; T is zero-padded up to a multiple of it.
      compute_dtype: dtype of the matmul operands (e.g. jnp.bfloat16); accumulation and everything after
        is float32. Default: hidden's dtype. Ignored for a callable head.
      return_entropy: also return the per-token entropy of the full distribution.
      temperature: the logits are divided by it before the softmax (SPEC.md "Temperature": the policy
        update's old, reference and current log-probs all use the rollout temperature, so the gradient
        and the KL refer to the distribution that was sampled). 1.0 = the model's own distribution.
    Returns:
      (logp [B, T] float32, entropy [B, T] float32 or None). Differentiable w.r.t. hidden and head.
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"token_logprobs: hidden {hidden.shape} must be [B, T, H] and targets {targets.shape} [B, T]"
        )
    if head_layout not in ("vh", "hv"):
        raise ValueError(f"token_logprobs: head_layout must be 'vh' or 'hv', got {head_layout!r}")
    if chunk_size < 1:
        raise ValueError(f"token_logprobs: chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    inv_t = 1.0 / float(temperature)
    b, t, h = hidden.shape
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    hid = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))) if pad else hidden
    tgt = jnp.pad(targets, ((0, 0), (0, pad))) if pad else targets
    hid = hid.reshape(b, n, c, h).swapaxes(0, 1)  # [n, B, C, H]
    tgt = tgt.reshape(b, n, c).swapaxes(0, 1).astype(jnp.int32)  # [n, B, C]

    array_head = None if callable(head) else head

    def chunk(w, h_c, t_c):
        logits = _logits(h_c, head if w is None else w, head_layout, compute_dtype)
        if inv_t != 1.0:
            logits = logits * inv_t
        logp, ent = logprobs_from_logits(logits, t_c, return_entropy=return_entropy)
        return (logp, ent) if return_entropy else (logp,)

    if n == 1:
        # One chunk: recomputing its logits in the backward pass would save no memory (the backward
        # holds one [B, C, V] block either way), only cost a second LM-head matmul.
        out = jax.tree.map(lambda x: x[None], chunk(array_head, hid[0], tgt[0]))
    else:
        out = jax.lax.map(lambda xs: jax.checkpoint(chunk)(array_head, *xs), (hid, tgt))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    logp = unchunk(out[0])
    entropy = unchunk(out[1]) if return_entropy else None
    return logp, entropy


def response_logprobs(
    hidden: jax.Array,
    head: Head,
    response_ids: jax.Array,
    prompt_len: int,
    **kwargs,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of the response tokens for the layout concat(prompt [P], response [R]) (HELPERS.md).

    The hidden state at column j predicts token j+1, so columns P-1 .. P+R-2 predict response tokens
    0 .. R-1 (the first response token is predicted from the last prompt column, which is a real token
    because prompts are LEFT-padded). The hidden state at the last column is not used.

    Args:
      hidden: [B, T, H] with T >= P + R - 1 (normally T = P + R).
      response_ids: [B, R] response token ids (right-padded; mask the result with response_mask).
      prompt_len: P (static).
      **kwargs: passed to ``token_logprobs`` (chunk_size, head_layout, compute_dtype, return_entropy,
        temperature).
    Returns:
      (logp [B, R], entropy [B, R] or None), float32.
    """
    r = response_ids.shape[1]
    if prompt_len < 1 or hidden.shape[1] < prompt_len + r - 1:
        raise ValueError(
            f"response_logprobs: hidden {hidden.shape} too short for prompt_len={prompt_len} and R={r}"
        )
    h = jax.lax.slice_in_dim(hidden, prompt_len - 1, prompt_len - 1 + r, axis=1)
    return token_logprobs(h, head, response_ids, **kwargs)
