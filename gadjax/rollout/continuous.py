"""The continuous-batching rollout program: decode work follows the rows still generating.

The static program (decode.py) decodes all B*N rows together until the last one stops, so with real
answer lengths (gadjax.data.lengths: mean ~330 of a 1,536 cap) most row-steps run on rows that already
stopped. This program keeps S fixed decode slots (static shapes for XLA) and a queue of the W = B*N
(prompt, sample) rows, like JetStream's insert:

1. prefill: the B left-padded prompts, once each, into a prompt cache of P_bucket slots (not P + R), and
   the first token of every row is drawn from its prompt's last logits (as the static program does);
2. each iteration of one `jax.lax.while_loop`: every free slot takes the next pending row (its prompt's
   cache row is copied into the slot: an insert), then one decode step runs on all S slots; a slot whose
   row emitted a stop id or reached max_new_tokens is free for the next iteration.
   The loop ends when the queue is empty and no slot is busy;
3. tail compaction (`SamplingConfig.tail_compaction`, levels from config.slot_levels): once the queue is
   empty and the live rows fit in the next level's slots (half as many), they are gathered with their
   caches into that smaller batch (within each batch shard's group of slots, so no device gathers
   another's caches: the condition is that every group's live rows fit its half) and decoding goes on in
   a loop of its own (each level is one more while_loop, so one more decode body, in the same program).
   Without it the last rows, which start late and run long, keep every slot's decode step running while
   most slots idle: on the CPU length profile that tail was ~36% of the slot-steps (11,248 computed,
   7,246 with it; README "Rollout batching"). The gather holds the old and the new
   slot caches at once (rollout/memory.py counts it); rows keep their keys and positions, so tokens do not
   change.

Slot caches are circular: P_bucket + R columns and one scratch column. Decode iteration g writes its new
key/value into the scratch column (the model's own cache write at index P + R, so the model code is
unchanged) and then copies it to column g mod (P + R); an insert at iteration g rotates the prompt so its
last column lands at (g - 1) mod (P + R). A row occupies at most P_bucket + R - 1 consecutive columns, so it
never overwrites itself, every slot writes at the same column (one in-place dynamic_update_slice, as in
the static program), and attention masks by the slot's own mask: positions are passed explicitly, and
attention does not depend on the order of the columns.

Same key, same tokens: a row's draws are keyed by (prompt, sample, position) (gadjax.rollout.sampling.
row_keys), never by slot, so this program gives the static program's tokens; log-probs agree to float
rounding (the slot batch and the column order change how XLA sums).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.models.decoder import KVCache
from gadjax.parallel.rules import constrain
from gadjax.rollout import unrolled
from gadjax.rollout.config import SamplingConfig
from gadjax.rollout.decode import chooser, finish, prefill, shard_cache, stop_test
from gadjax.rollout.sampling import row_keys, step_keys


def pad_roll(row: jax.Array, axis: int, length: int, shift: jax.Array) -> jax.Array:
    """Zero-pad `row` to `length` along `axis`, rotate it by `shift`, then add one zero scratch column."""
    pad = [(0, 0)] * row.ndim
    pad[axis] = (0, length - row.shape[axis])
    rolled = jnp.roll(jnp.pad(row, pad), shift, axis=axis)
    pad[axis] = (0, 1)
    return jnp.pad(rolled, pad)


def insert_row(
    dst: jax.Array,
    src: jax.Array,
    prompt: jax.Array,
    slot: jax.Array,
    b_ax: int,
    l_ax: int,
    length: int,
    shift: jax.Array,
) -> jax.Array:
    """Copy prompt row `prompt` of the prompt cache `src` into slot `slot` of `dst`, rotated by `shift`."""
    row = jax.lax.dynamic_index_in_dim(src, prompt, b_ax, keepdims=True)
    row = pad_roll(row, l_ax, length, shift).astype(dst.dtype)
    start = [jnp.int32(0)] * dst.ndim
    start[b_ax] = slot
    return jax.lax.dynamic_update_slice(dst, row, start)


def commit(dst: jax.Array, l_ax: int, length: int, col: jax.Array) -> jax.Array:
    """Copy the scratch column (index `length`) to column `col`."""
    scratch = jax.lax.slice_in_dim(dst, length, length + 1, axis=l_ax)
    start = [jnp.int32(0)] * dst.ndim
    start[l_ax] = col
    return jax.lax.dynamic_update_slice(dst, scratch, start)


class Layout:
    """The slot cache in the layer loop's layout: stacked KVCache (scan) or per-layer LayerCaches."""

    def __init__(self, layer_loop: str):
        self.unrolled = layer_loop == "unrolled"

    def arrays(self, cache: Any) -> list[tuple[jax.Array, int, int]]:
        """(array, batch axis, length axis) of every key / value array."""
        if self.unrolled:  # k [S, Hkv, D, len], v [S, Hkv, len, D]
            return [(k, 0, 3) for k in cache.k] + [(v, 0, 2) for v in cache.v]
        return [(cache.k, 1, 3), (cache.v, 1, 3)]  # [L, S, Hkv, len, D]

    def rebuild(self, cache: Any, arrays: list[jax.Array], mask: jax.Array, index: Any) -> Any:
        if self.unrolled:
            n = len(cache.k)
            return unrolled.LayerCaches(k=tuple(arrays[:n]), v=tuple(arrays[n:]), mask=mask, index=index)
        return shard_cache(KVCache(k=arrays[0], v=arrays[1], mask=mask, index=index))


def _continuous_rollout(
    graphdef: Any,
    cfg: SamplingConfig,
    cache_dtype: Any,
    layer_loop: str,
    levels: tuple[int, ...],
    groups: int,
    state: nnx.State,
    ids: jax.Array,
    mask: jax.Array,
    prompt_keys: jax.Array,
) -> dict[str, jax.Array]:
    """B prompts x N samples in `levels[0]` decode slots, the tail in `levels[1:]` (see the module doc),
    compacted within `groups` equal groups of slots (the batch shards; every level a multiple of it);
    outputs as decode._rollout."""
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    n, r = cfg.n_samples, cfg.max_new_tokens
    w, length = b * n, p + r
    choose, is_stop = chooser(cfg), stop_test(cfg)
    keys = row_keys(prompt_keys, jnp.arange(w), n)
    layout = Layout(layer_loop)

    # 1. prefill the B prompts once into a P-column prompt cache; first token of every row.
    pcache, logits = prefill(model, ids, mask, p, cache_dtype)
    prompt_len = mask.sum(axis=1).astype(jnp.int32)
    tok0, lp0, slp0 = choose(
        constrain(jnp.repeat(logits, n, axis=0), ("batch", "act_vocab")), step_keys(keys, 0)
    )
    tokens = jnp.full((w, r), cfg.pad_id, jnp.int32).at[:, 0].set(tok0)
    logprobs = jnp.zeros((w, r), jnp.float32).at[:, 0].set(lp0)
    sampling_lp = jnp.zeros((w, r), jnp.float32).at[:, 0].set(slp0)
    done0 = is_stop(tok0) | (r == 1)
    lengths = jnp.ones((w,), jnp.int32)
    # The queue: rows still to decode, in row order (rows done at their first token never take a slot).
    queue = jnp.argsort(done0, stable=True).astype(jnp.int32)
    n_todo = jnp.sum(~done0).astype(jnp.int32)

    empty = shard_cache(model.init_cache(levels[0], length + 1, cache_dtype))
    if layout.unrolled:
        weights = unrolled.decode_weights(model)
        pcache = unrolled.unstack_cache(pcache)
        cache = unrolled.unstack_cache(empty)

        def forward(last: jax.Array, pos: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            return unrolled.decode_step(weights, model.config, cache, last, pos, by_mask_only=True)
    else:
        cache = empty

        def forward(last: jax.Array, pos: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
            hidden, cache = model(last[:, None], pos[:, None], jnp.ones((last.shape[0], 1), jnp.int32), cache)
            return model.logits(hidden)[:, 0], cache

    src_arrays = [a for a, _, _ in layout.arrays(pcache)]

    def insert(carry: tuple, g: jax.Array) -> tuple:
        """Every free slot takes the next pending row (its prompt's cache rotated to end at g - 1)."""
        cache, item, t, last, nxt = carry
        s = item.shape[0]
        free = item < 0
        take = jnp.minimum(jnp.sum(free), n_todo - nxt)
        free_slots = jnp.nonzero(free, size=s, fill_value=0)[0].astype(jnp.int32)
        shift = jnp.mod(g - p, length)

        def one(k: jax.Array, c: tuple) -> tuple:
            cache, item, t, last = c
            slot, row = free_slots[k], queue[nxt + k]
            prompt = row // n
            arrs = [
                insert_row(a, src, prompt, slot, b_ax, l_ax, length, shift)
                for (a, b_ax, l_ax), src in zip(layout.arrays(cache), src_arrays, strict=True)
            ]
            pmask = jax.lax.dynamic_index_in_dim(pcache.mask, prompt, 0, keepdims=True)
            new_mask = jax.lax.dynamic_update_slice(cache.mask, pad_roll(pmask, 1, length, shift), (slot, 0))
            cache = layout.rebuild(cache, arrs, new_mask, cache.index)
            return cache, item.at[slot].set(row), t.at[slot].set(1), last.at[slot].set(tok0[row])

        cache, item, t, last = jax.lax.fori_loop(0, take, one, (cache, item, t, last))
        return cache, item, t, last, nxt + take

    # 2. iterations: insert (first level only: the tail levels start once the queue is empty), then one
    # decode step on every slot.
    def body(carry: tuple, inserting: bool) -> tuple:
        g, cache, item, t, last, nxt, tokens, logprobs, sampling_lp, lengths = carry
        s = item.shape[0]
        if inserting:
            cache, item, t, last, nxt = insert((cache, item, t, last, nxt), g)
        active = item >= 0
        row = jnp.maximum(item, 0)
        pos = prompt_len[row // n] + t - 1
        col = jnp.mod(g, length)
        if layout.unrolled:  # our decode step attends by the mask alone: it writes at the column itself
            cache = layout.rebuild(cache, [a for a, _, _ in layout.arrays(cache)], cache.mask, col)
            logits, cache = forward(last, pos, cache)
        else:  # the model attends to columns before its index: write at the scratch column, then copy
            cache = layout.rebuild(
                cache, [a for a, _, _ in layout.arrays(cache)], cache.mask, jnp.int32(length)
            )
            logits, cache = forward(last, pos, cache)
            arrs = [commit(a, l_ax, length, col) for a, _, l_ax in layout.arrays(cache)]
            new_mask = jax.lax.dynamic_update_slice(cache.mask, jnp.ones((s, 1), cache.mask.dtype), (0, col))
            cache = layout.rebuild(cache, arrs, new_mask, jnp.int32(length))

        logits = constrain(logits, ("batch", "act_vocab"))
        tok, lp, slp = choose(logits, step_keys(keys[row], t))
        # Idle slots write out of bounds (dropped).
        at = (jnp.where(active, item, w), jnp.minimum(t, r - 1))
        tokens = tokens.at[at].set(tok, mode="drop")
        logprobs = logprobs.at[at].set(lp, mode="drop")
        sampling_lp = sampling_lp.at[at].set(slp, mode="drop")
        finished = active & (is_stop(tok) | (t + 1 >= r))
        lengths = lengths.at[jnp.where(finished, item, w)].set(t + 1, mode="drop")
        item = jnp.where(finished, -1, item)
        return g + 1, cache, item, t + 1, tok, nxt, tokens, logprobs, sampling_lp, lengths

    def group_live(item: jax.Array) -> jax.Array:
        """Live rows of each group of slots [groups] (a group: the slots one batch shard holds)."""
        return jnp.sum((item >= 0).reshape(groups, -1), axis=1)

    def run_until(carry: tuple, live_at_most: int, inserting: bool) -> tuple:
        """Decode until the queue is empty and every group has at most `live_at_most` busy slots."""

        def cond(carry: tuple) -> jax.Array:
            item, nxt = carry[2], carry[5]
            return (nxt < n_todo) | (jnp.max(group_live(item)) > live_at_most)

        return jax.lax.while_loop(cond, functools.partial(body, inserting=inserting), carry)

    def compact(carry: tuple, s: int) -> tuple:
        """Each group's live slots (at most s / groups) with their caches, moved into the first slots of
        that group in an `s`-slot batch. Within groups: a gather across the batch-sharded slot axis would
        make every device hold every slot's cache (the v5p-16 plan: 99.8 GiB of temporaries per chip)."""
        g, cache, item, t, last, *rest = carry
        old, new = item.shape[0] // groups, s // groups
        live = (item >= 0).reshape(groups, old)
        pick = jax.vmap(lambda row: jnp.nonzero(row, size=new, fill_value=0)[0].astype(jnp.int32))(live)
        kept = (jnp.arange(new)[None, :] < jnp.sum(live, axis=1, keepdims=True)).reshape(s)

        def gather(a: jax.Array, axis: int) -> jax.Array:
            grouped = a.reshape(a.shape[:axis] + (groups, old) + a.shape[axis + 1 :])
            take = jax.vmap(lambda x, i: jnp.take(x, i, axis=axis), in_axes=(axis, 0), out_axes=axis)
            return take(grouped, pick).reshape(a.shape[:axis] + (s,) + a.shape[axis + 1 :])

        arrs = [gather(a, b_ax) for a, b_ax, _ in layout.arrays(cache)]
        cache = layout.rebuild(cache, arrs, gather(cache.mask, 0), cache.index)
        return (g, cache, jnp.where(kept, gather(item, 0), -1), gather(t, 0), gather(last, 0), *rest)

    idle = jnp.full((levels[0],), -1, jnp.int32)
    zeros = jnp.zeros((levels[0],), jnp.int32)
    carry = (jnp.int32(0), cache, idle, zeros, zeros, jnp.int32(0), tokens, logprobs, sampling_lp, lengths)
    # Every level decodes until the live rows fit the next one (the last: until none is left).
    slot_steps = jnp.int32(0)
    for k, s in enumerate(levels):
        if k:
            carry = compact(carry, s)
        nxt_level = levels[k + 1] // groups if k + 1 < len(levels) else 0
        g_start = carry[0]
        carry = run_until(carry, nxt_level, inserting=k == 0)
        slot_steps += s * (carry[0] - g_start)
    g, _, _, _, _, _, tokens, logprobs, sampling_lp, lengths = carry
    out = finish(cfg, tokens, logprobs, sampling_lp, lengths)
    out["steps"] = g
    out["slot_steps"] = slot_steps
    return out
