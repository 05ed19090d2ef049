"""The serving engine's device side: a fixed set of decode slots that requests join and leave.

Unlike a training rollout (gadjax.rollout.continuous: one program runs the whole queue), a server does
not know its rows in advance, so the host loop (gadjax.serving.continuous) calls three jitted programs:

- `prefill`: one request's prompt (left-padded to a prompt bucket) -> its prompt cache and last logits;
- `insert`: one row of that request into a free slot (the prompt cache rotated into the slot's circular
  cache, as in gadjax.rollout.continuous) and its first token drawn;
- `decode`: `steps` decode steps on every slot; the new tokens come back to the host, which ends rows at
  a stop id or their max_tokens and frees their slots.

Every slot carries its own key, temperature and top_p, so requests with any settings share the slots.
A row's draws are keyed by (request key, choice index, position) (gadjax.rollout.sampling), so the same
seed gives the same text whatever else is running. The state is donated: updates happen in place.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.models.decoder import KVCache, positions_from_mask
from gadjax.rollout import unrolled
from gadjax.rollout.config import resolve_layer_loop
from gadjax.rollout.continuous import Layout, commit, insert_row, pad_roll
from gadjax.rollout.sampling import choose_tokens_rows, step_keys


@flax.struct.dataclass
class SlotState:
    """Per-slot decode state: the circular caches, the last token and its position, the next response
    position t, the row key, temperature (0 = greedy) and top_p; g counts decode steps (column g mod len)."""

    cache: Any
    last: jax.Array
    pos: jax.Array
    t: jax.Array
    keys: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    g: jax.Array


class Slots:
    """The three programs for one model, `slots` slots of max_prompt + max_new columns (+ 1 scratch)."""

    def __init__(self, model: Any, slots: int, max_prompt: int, max_new: int, layer_loop: str = "auto"):
        self.graphdef, self.params = nnx.split(model)
        self.model_config, self.dtype = model.config, model.dtype
        self.slots, self.length = int(slots), int(max_prompt + max_new)
        self.layout = Layout(resolve_layer_loop(layer_loop, None))
        # The decode loop's weights: the per-layer fused layout, made once (the server's weights are fixed).
        self.weights = unrolled.decode_weights(model) if self.layout.unrolled else self.params
        self._prefill = jax.jit(self._prefill_fn)
        self._insert = jax.jit(self._insert_fn, donate_argnums=0)
        self._decode = jax.jit(self._decode_fn, static_argnums=2, donate_argnums=1)

    def init(self) -> SlotState:
        """Empty slots (every slot idle until an insert)."""
        model = nnx.merge(self.graphdef, self.params)
        cache = model.init_cache(self.slots, self.length + 1, self.dtype)
        if self.layout.unrolled:
            cache = unrolled.unstack_cache(cache)
        zeros = lambda: jnp.zeros((self.slots,), jnp.int32)  # distinct buffers: the state is donated
        ones = lambda: jnp.ones((self.slots,), jnp.float32)
        keys = jax.random.split(jax.random.key(0), self.slots)
        return SlotState(cache, zeros(), zeros(), zeros(), keys, ones(), ones(), jnp.int32(0))

    def _prefill_fn(self, params: nnx.State, ids: jax.Array, mask: jax.Array) -> tuple[Any, jax.Array]:
        model = nnx.merge(self.graphdef, params)
        cache = model.init_cache(1, ids.shape[1], self.dtype)
        hidden, cache = model(ids, positions_from_mask(mask), mask, cache, cache_is_empty=True)
        if self.layout.unrolled:
            cache = unrolled.unstack_cache(cache)
        return cache, model.logits(hidden[:, -1:])[:, 0]

    def prefill(self, ids: jax.Array, mask: jax.Array) -> tuple[Any, jax.Array]:
        """Prompt cache and last logits [1, V] of one left-padded prompt [1, P]."""
        return self._prefill(self.params, ids, mask)

    def _insert_fn(
        self,
        st: SlotState,
        pcache: Any,
        logits: jax.Array,
        slot: jax.Array,
        key: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        plen: jax.Array,
    ) -> tuple[SlotState, jax.Array]:
        tok = choose_tokens_rows(logits, step_keys(key[None], 0), temperature[None], top_p[None])[0]
        shift = jnp.mod(st.g - pcache.mask.shape[1], self.length)
        src = [a for a, _, _ in self.layout.arrays(pcache)]
        arrs = [
            insert_row(a, s, jnp.int32(0), slot, b_ax, l_ax, self.length, shift)
            for (a, b_ax, l_ax), s in zip(self.layout.arrays(st.cache), src, strict=True)
        ]
        row_mask = pad_roll(pcache.mask, 1, self.length, shift)
        mask = jax.lax.dynamic_update_slice(st.cache.mask, row_mask, (slot, jnp.int32(0)))
        cache = self.layout.rebuild(st.cache, arrs, mask, st.cache.index)
        return st.replace(
            cache=cache,
            last=st.last.at[slot].set(tok),
            pos=st.pos.at[slot].set(plen),
            t=st.t.at[slot].set(1),
            keys=st.keys.at[slot].set(key),
            temperature=st.temperature.at[slot].set(temperature),
            top_p=st.top_p.at[slot].set(top_p),
        ), tok

    def insert(
        self,
        st: SlotState,
        pcache: Any,
        logits: jax.Array,
        slot: int,
        key: jax.Array,
        temperature: float,
        top_p: float,
        plen: int,
    ) -> tuple[SlotState, jax.Array]:
        """Put one row of a prefilled request in `slot` (donates `st`); returns the state and token 0."""
        return self._insert(
            st,
            pcache,
            logits,
            jnp.int32(slot),
            key,
            jnp.float32(temperature),
            jnp.float32(top_p),
            jnp.int32(plen),
        )

    def _decode_fn(self, weights: Any, st: SlotState, steps: int) -> tuple[SlotState, jax.Array]:
        cfg, length = self.model_config, self.length
        if self.layout.unrolled:
            forward = functools.partial(unrolled.decode_step, weights, cfg, by_mask_only=True)
        else:
            model = nnx.merge(self.graphdef, weights)
            ones = jnp.ones((self.slots, 1), jnp.int32)

            def forward(cache: KVCache, last: jax.Array, pos: jax.Array) -> tuple[jax.Array, KVCache]:
                hidden, cache = model(last[:, None], pos[:, None], ones, cache)
                return model.logits(hidden)[:, 0], cache

        def step(st: SlotState, _: Any) -> tuple[SlotState, jax.Array]:
            col = jnp.mod(st.g, length)
            arrs = [a for a, _, _ in self.layout.arrays(st.cache)]
            if self.layout.unrolled:  # attends by the mask alone: writes at the column itself (no copy)
                logits, cache = forward(
                    self.layout.rebuild(st.cache, arrs, st.cache.mask, col), st.last, st.pos
                )
            else:  # the model attends before its index: write at the scratch column, then copy it
                cache = self.layout.rebuild(st.cache, arrs, st.cache.mask, jnp.int32(length))
                logits, cache = forward(cache, st.last, st.pos)
                arrs = [commit(a, l_ax, length, col) for a, _, l_ax in self.layout.arrays(cache)]
                ones = jnp.ones((self.slots, 1), cache.mask.dtype)
                mask = jax.lax.dynamic_update_slice(cache.mask, ones, (0, col))
                cache = self.layout.rebuild(cache, arrs, mask, jnp.int32(length))
            tok = choose_tokens_rows(logits, step_keys(st.keys, st.t), st.temperature, st.top_p)
            st = st.replace(cache=cache, last=tok, pos=st.pos + 1, t=st.t + 1, g=st.g + 1)
            return st, tok

        st, toks = jax.lax.scan(step, st, None, length=steps)
        return st, toks.T

    def decode(self, st: SlotState, steps: int) -> tuple[SlotState, jax.Array]:
        """`steps` decode steps on every slot (donates `st`): the state and the new tokens [slots, steps]."""
        return self._decode(self.weights, st, steps)
