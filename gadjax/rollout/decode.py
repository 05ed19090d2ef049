"""The static rollout program: prefill the left-padded prompts once, repeat the cache to N samples per
prompt, then decode every row together with a `jax.lax.while_loop` over a preallocated KV cache until every
row stopped or R tokens exist (gadjax.rollout.sampler's module docstring tells the whole story; Sampler
jits this function once per prompt bucket and batch size, gadjax.plan compiles it for TPU topologies).

Also the pieces the continuous program (gadjax.rollout.continuous) shares with it: the token choice, stop
test, cache sharding and the final response masks, so both give the same tokens for the same key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.models.decoder import KVCache, positions_from_mask
from gadjax.parallel.rules import constrain
from gadjax.rollout import unrolled
from gadjax.rollout.config import SamplingConfig
from gadjax.rollout.memory import CACHE_AXES
from gadjax.rollout.sampling import choose_tokens, row_keys, step_keys

Choose = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def chooser(cfg: SamplingConfig) -> Choose:
    """(logits [rows, V], per-row keys [rows]) -> (tokens, log-probs, sampling log-probs) under cfg."""
    return functools.partial(
        choose_tokens,
        greedy=cfg.is_greedy,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        method=cfg.method,
    )


def stop_test(cfg: SamplingConfig) -> Callable[[jax.Array], jax.Array]:
    """tokens -> bool: is each one of cfg.stop_ids."""
    stop = jnp.asarray(sorted(cfg.stop_ids), jnp.int32) if cfg.stop_ids else None

    def is_stop(tok: jax.Array) -> jax.Array:
        if stop is None:
            return jnp.zeros(tok.shape, bool)
        return (tok[..., None] == stop).any(-1)

    return is_stop


def shard_cache(c: KVCache) -> KVCache:
    """The stacked KV cache laid out by the rule table (batch over data x fsdp, kv heads over tensor)."""
    return KVCache(
        k=constrain(c.k, CACHE_AXES),
        v=constrain(c.v, CACHE_AXES),
        mask=constrain(c.mask, ("batch", "cache_length")),
        index=c.index,
    )


def prefill(model: Any, ids: jax.Array, mask: jax.Array, length: int, cache_dtype: Any):
    """Prefill the B left-padded prompts into a fresh cache of `length` slots: (cache, last logits [B, V])."""
    cache = shard_cache(model.init_cache(ids.shape[0], length, cache_dtype))
    hidden, cache = model(ids, positions_from_mask(mask), mask, cache, cache_is_empty=True)
    logits = model.logits(hidden[:, -1:])[:, 0]  # left padding puts every last token at column P-1
    return shard_cache(cache), constrain(logits, ("batch", "act_vocab"))


def finish(
    cfg: SamplingConfig, tokens: jax.Array, logprobs: jax.Array, sampling_lp: jax.Array, lengths: jax.Array
) -> dict[str, jax.Array]:
    """The program's outputs from [rows, R] buffers and each row's written length (see RolloutOutput)."""
    is_stop = stop_test(cfg)
    written = jnp.arange(cfg.max_new_tokens)[None, :] < lengths[:, None]
    stops = is_stop(tokens) & written
    after_stop = (jnp.cumsum(stops, axis=1) - stops) > 0
    resp_mask = (written & ~after_stop).astype(jnp.int32)
    return {
        "response_ids": jnp.where(resp_mask == 1, tokens, cfg.pad_id),
        "response_mask": resp_mask,
        "response_lengths": resp_mask.sum(axis=1).astype(jnp.int32),
        "logprobs": logprobs * resp_mask,
        "sampling_logprobs": sampling_lp * resp_mask,
        "truncated": ~(stops & (resp_mask == 1)).any(axis=1),
    }


def _rollout(
    graphdef: Any,
    cfg: SamplingConfig,
    cache_dtype: Any,
    layer_loop: str,
    state: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    prompt_keys: jax.Array,
) -> dict[str, jax.Array]:
    """Prefill once per prompt, broadcast to N samples, decode with a while_loop (see module doc).

    prompt_keys [B]: one typed key per prompt (the Sampler folds each prompt's index in the whole batch
    into the rollout key, so micro_batches chunks draw what the unchunked batch draws)."""
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    n, r = cfg.n_samples, cfg.max_new_tokens
    rows = b * n
    choose, is_stop = chooser(cfg), stop_test(cfg)
    keys = row_keys(prompt_keys, jnp.arange(rows), n)

    # 1. prefill the B prompts once.
    cache, logits = prefill(model, ids, mask, p + r, cache_dtype)

    # 2. broadcast to B*N rows (row i*N + j = sample j of prompt i).
    cache = shard_cache(
        KVCache(
            k=jnp.repeat(cache.k, n, axis=1),
            v=jnp.repeat(cache.v, n, axis=1),
            mask=jnp.repeat(cache.mask, n, axis=0),
            index=cache.index,
        )
    )
    logits = constrain(jnp.repeat(logits, n, axis=0), ("batch", "act_vocab"))
    prompt_len = jnp.repeat(mask.sum(axis=1).astype(jnp.int32), n, axis=0)

    tok, lp, slp = choose(logits, step_keys(keys, 0))
    tokens = jnp.full((rows, r), cfg.pad_id, jnp.int32).at[:, 0].set(tok)
    logprobs = jnp.zeros((rows, r), jnp.float32).at[:, 0].set(lp)
    sampling_lp = jnp.zeros((rows, r), jnp.float32).at[:, 0].set(slp)
    done = is_stop(tok)
    ones = jnp.ones((rows, 1), jnp.int32)

    if layer_loop == "unrolled":
        # Per-layer weights and caches, made once here, outside the loop (see gadjax.rollout.unrolled).
        weights = unrolled.decode_weights(model)
        cache = unrolled.unstack_cache(cache)

        def forward(last: jax.Array, pos: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            return unrolled.decode_step(weights, model.config, cache, last, pos)
    else:

        def forward(last: jax.Array, pos: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            hidden, cache = model(last[:, None], pos[:, None], ones, cache)
            return model.logits(hidden)[:, 0], cache

    # 3. decode: step t feeds token t-1 (at position prompt_len + t - 1) and samples token t.
    def cond(carry: tuple) -> jax.Array:
        t, _, _, _, _, done, _ = carry
        return (t < r) & ~jnp.all(done)

    def body(carry: tuple) -> tuple:
        t, cache, tokens, logprobs, sampling_lp, done, last = carry
        logits, cache = forward(last, prompt_len + t - 1, cache)
        logits = constrain(logits, ("batch", "act_vocab"))
        tok, lp, slp = choose(logits, step_keys(keys, t))
        tok = jnp.where(done, cfg.pad_id, tok)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
        logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(done, 0.0, lp)[:, None], (0, t))
        sampling_lp = jax.lax.dynamic_update_slice(sampling_lp, jnp.where(done, 0.0, slp)[:, None], (0, t))
        return t + 1, cache, tokens, logprobs, sampling_lp, done | is_stop(tok), tok

    init = (jnp.int32(1), cache, tokens, logprobs, sampling_lp, done, tok)
    t_end, _, tokens, logprobs, sampling_lp, done, _ = jax.lax.while_loop(cond, body, init)
    # Every row was written up to t_end (pad after its stop); finish masks what follows the first stop.
    out = finish(cfg, tokens, logprobs, sampling_lp, jnp.full((rows,), t_end, jnp.int32))
    out["steps"] = t_end - 1
    out["slot_steps"] = (t_end - 1) * tokens.shape[0]
    return out
