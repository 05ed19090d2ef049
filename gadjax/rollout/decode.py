"""The rollout program: prefill the left-padded prompts once, repeat the cache to N samples per prompt,
then decode with a `jax.lax.while_loop` over a preallocated KV cache until every row stopped or R tokens
exist (gadjax.rollout.sampler's module docstring tells the whole story; Sampler jits this function once
per prompt bucket and batch size, gadjax.plan compiles it for TPU topologies).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from gadjax.models.decoder import KVCache, positions_from_mask
from gadjax.parallel.rules import constrain
from gadjax.rollout import unrolled
from gadjax.rollout.memory import CACHE_AXES
from gadjax.rollout.sampling import choose_tokens

if TYPE_CHECKING:  # sampler imports this module
    from gadjax.rollout.sampler import SamplingConfig


def resolve_layer_loop(layer_loop: str, mesh: Mesh | None) -> str:
    """Resolve "auto": "unrolled" on one CPU device (where it was measured faster), else "scan"."""
    if layer_loop != "auto":
        return layer_loop
    if mesh is None:
        return "unrolled" if jax.default_backend() == "cpu" else "scan"
    return "unrolled" if mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu" else "scan"


def _rollout(
    graphdef: Any,
    cfg: SamplingConfig,
    cache_dtype: Any,
    layer_loop: str,
    state: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    rng: jax.Array,
    row_offset: jax.Array | int = 0,
) -> dict[str, jax.Array]:
    """Prefill once per prompt, broadcast to N samples, decode with a while_loop (see module doc).

    With cfg.micro_batches > 1 the prompts are one chunk of the batch and `row_offset` is its first row:
    the random draws are those of the whole batch's rows (gadjax.rollout.sampling.rows_of)."""
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    n, r = cfg.n_samples, cfg.max_new_tokens
    rows = b * n
    choose = functools.partial(
        choose_tokens,
        greedy=cfg.is_greedy,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        method=cfg.method,
        row_offset=row_offset,
        total_rows=rows * cfg.micro_batches,
    )
    stop = jnp.asarray(sorted(cfg.stop_ids), jnp.int32) if cfg.stop_ids else None

    def is_stop(tok: jax.Array) -> jax.Array:
        if stop is None:
            return jnp.zeros(tok.shape, bool)
        return (tok[..., None] == stop).any(-1)

    def shard_cache(c: KVCache) -> KVCache:
        return KVCache(
            k=constrain(c.k, CACHE_AXES),
            v=constrain(c.v, CACHE_AXES),
            mask=constrain(c.mask, ("batch", "cache_length")),
            index=c.index,
        )

    # 1. prefill the B prompts once.
    cache = shard_cache(model.init_cache(b, p + r, cache_dtype))
    hidden, cache = model(ids, positions_from_mask(mask), mask, cache, cache_is_empty=True)
    logits = model.logits(hidden[:, -1:])[:, 0]  # [B, V]: left padding puts every last token at p-1

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

    tok, lp, slp = choose(logits, jax.random.fold_in(rng, 0))
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
        tok, lp, slp = choose(logits, jax.random.fold_in(rng, t))
        tok = jnp.where(done, cfg.pad_id, tok)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
        logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(done, 0.0, lp)[:, None], (0, t))
        sampling_lp = jax.lax.dynamic_update_slice(sampling_lp, jnp.where(done, 0.0, slp)[:, None], (0, t))
        return t + 1, cache, tokens, logprobs, sampling_lp, done | is_stop(tok), tok

    init = (jnp.int32(1), cache, tokens, logprobs, sampling_lp, done, tok)
    t_end, _, tokens, logprobs, sampling_lp, done, _ = jax.lax.while_loop(cond, body, init)

    cols = jnp.arange(r)[None, :]
    written = cols < t_end
    stops = is_stop(tokens) & written
    after_stop = (jnp.cumsum(stops, axis=1) - stops) > 0
    resp_mask = (written & ~after_stop).astype(jnp.int32)
    tokens = jnp.where(resp_mask == 1, tokens, cfg.pad_id)
    return {
        "response_ids": tokens,
        "response_mask": resp_mask,
        "response_lengths": resp_mask.sum(axis=1).astype(jnp.int32),
        "logprobs": logprobs * resp_mask,
        "sampling_logprobs": sampling_lp * resp_mask,
        "truncated": ~(stops & (resp_mask == 1)).any(axis=1),
        "steps": t_end - 1,
    }
