"""The rollout engine: jitted prefill + KV-cache decode loop, N samples per prompt, per-token log-probs.

One call of `Sampler.generate` runs ONE jitted program (once per chunk of prompts with
`SamplingConfig.micro_batches` > 1):

1. prefill: the LEFT-padded prompt batch [B, P_bucket] is written once into a preallocated KV cache of
   length P_bucket + R (R = max_new_tokens); the last prompt column's logits give the first token;
2. broadcast: the cache and those logits are repeated to B*N rows (row i*N + j = sample j of prompt i),
   so each prompt is prefilled once, not N times;
3. decode: a `jax.lax.while_loop` feeds the last token, writes its keys/values at `cache.index` (one
   `dynamic_update_slice` on the loop carry, done in place) and samples the next one, until every row
   has emitted a stop id or R tokens exist. `SamplingConfig.layer_loop` picks how a step runs the
   layers: the model's scanned forward, or (default on one CPU device) gadjax.rollout.unrolled's
   per-layer fused weights, made once per rollout before the loop (1.5x faster per step there).

That is `SamplingConfig.batching="static"` (gadjax.rollout.decode). With "continuous"
(gadjax.rollout.continuous) the prompts are prefilled once into a P_bucket prompt cache and the B*N rows
queue for `slots` decode slots: a row that stops frees its slot for the next one, so the decode work
follows the rows still generating instead of the longest row. Both key every draw by (prompt, sample,
position): the same key gives the same tokens whichever program runs.

Compiled programs: prompts are left-padded to the smallest of `SamplingConfig.prompt_buckets` that holds
the longest prompt of the batch, so a Sampler compiles one program per (prompt bucket, batch size) it
sees: a run with a fixed rollout batch size compiles at most len(prompt_buckets) programs (one per
bucket actually hit), each once. Changing the SamplingConfig means a new Sampler (a new set of programs);
new parameter VALUES (after a training step) reuse the compiled programs.

Sharding: with a mesh, every batch-shaped array (prompt, cache, tokens) is laid out by the rule table's
"batch" logical axis (data x fsdp), the cache's kv heads by "kv_heads" (tensor), and the model's own
activation constraints apply; parameters stay in whatever sharding they already have. The random draws
do not depend on the sharding (see gadjax.rollout.sampling), so the same key gives the same tokens on
one device and on a mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gadjax.models.decoder import Decoder
from gadjax.parallel.rules import DEFAULT_RULES, Rules, named_sharding, use_mesh
from gadjax.rollout.config import (  # noqa: F401 (re-exported: the package's public names)
    BATCHINGS,
    DEFAULT_BUCKETS,
    LAYER_LOOPS,
    SamplingConfig,
    batch_shards,
    resolve_layer_loop,
    resolve_slots,
    slot_levels,
)
from gadjax.rollout.continuous import _continuous_rollout
from gadjax.rollout.decode import _rollout
from gadjax.rollout.memory import (
    MemoryEstimate,
    check_estimate,
    estimate_rollout_memory,
)

log = logging.getLogger(__name__)


def prompt_keys(rng: jax.Array, first: int, count: int) -> jax.Array:
    """Keys [count] of prompts first .. first + count - 1 of a batch: fold_in(rng, prompt index)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        rng, jnp.arange(first, first + count, dtype=jnp.uint32)
    )


@dataclasses.dataclass
class RolloutOutput:
    """Sampler output, numpy arrays on the host (or device arrays with `as_numpy=False`).

    Rows are B*N: row i*N + j is sample j of prompt i.
      prompt_ids         int32   [B*N, P]  the input prompts (as given, LEFT-padded), repeated N times
      prompt_mask        int32   [B*N, P]
      response_ids       int32   [B*N, R]  sampled tokens, pad_id after the first stop token
      response_mask      int32   [B*N, R]  1 up to AND INCLUDING the first stop token
      response_lengths   int32   [B*N]     = response_mask.sum(1)
      logprobs           float32 [B*N, R]  log p(token) under the model (temperature 1), 0 on padding
      sampling_logprobs  float32 [B*N, R]  log q(token) under the sampling distribution (temperature,
                                           top-k, top-p applied; 0 for greedy), 0 on padding
      truncated          bool    [B*N]     no stop token within R
      decode_steps       int               forward steps of the decode loop that ran (static: <= R - 1;
                                           continuous: iterations of the slot loop; with micro_batches,
                                           the longest chunk's)
      decode_slot_steps  int               rows x steps those forward steps computed, all chunks
                                           (static: rows x steps; continuous: each level's slots x its
                                           iterations, so the tail compaction shows here)
    """

    prompt_ids: Any
    prompt_mask: Any
    response_ids: Any
    response_mask: Any
    response_lengths: Any
    logprobs: Any
    sampling_logprobs: Any
    truncated: Any
    decode_steps: int
    decode_slot_steps: int = 0


def _check_left_padded(mask: np.ndarray) -> np.ndarray:
    """Real lengths per row; raises naming the row if a row is empty or not left-padded."""
    lengths = mask.sum(axis=1)
    p = mask.shape[1]
    for row in np.flatnonzero(lengths == 0):
        raise ValueError(f"prompt_mask row {row}: empty prompt (no real tokens)")
    cols = np.arange(p)[None, :]
    expected = (cols >= p - lengths[:, None]).astype(mask.dtype)
    bad = np.flatnonzero((expected != mask).any(axis=1))
    if bad.size:
        raise ValueError(
            f"prompt_mask row {bad[0]}: not LEFT-padded (real tokens must be the last columns); "
            f"{bad.size} such row(s)"
        )
    return lengths


class Sampler:
    """Rollout engine for one model structure and one SamplingConfig; compiled programs are cached.

    `model`: an nnx Decoder, or its (graphdef, state). Pass updated parameters to `generate(state=...)`
    (same structure and shardings) to sample from the current student without recompiling.
    """

    def __init__(
        self,
        model: Decoder | tuple[Any, nnx.State],
        config: SamplingConfig,
        *,
        mesh: Mesh | None = None,
        rules: Rules = DEFAULT_RULES,
    ):
        if isinstance(model, tuple):
            graphdef, state = model
            module = nnx.merge(graphdef, state)
        else:
            module = model
            graphdef, state = nnx.split(model)
        if not isinstance(module, Decoder):
            raise TypeError(f"Sampler needs a gadjax Decoder, got {type(module).__name__}")
        self.graphdef = graphdef
        self.state = state
        self.model_config = module.config
        self.cache_dtype = jnp.dtype(config.cache_dtype or module.dtype)
        self.config = config
        self.mesh = mesh
        self.rules = tuple(rules)
        self.layer_loop = resolve_layer_loop(config.layer_loop, mesh)
        self._programs: dict[tuple[int, int], Any] = {}

    # ---- bookkeeping -------------------------------------------------------------------------------
    @property
    def num_compiled(self) -> int:
        """Programs compiled so far (one per (prompt bucket, batch size) seen)."""
        return len(self._programs)

    def memory_estimate(
        self, batch: int, prompt_bucket: int, state: nnx.State | None = None
    ) -> MemoryEstimate:
        """Per-device bytes of a rollout of `batch` prompts in `prompt_bucket` (x n_samples rows)."""
        return estimate_rollout_memory(
            self.model_config,
            self.config,
            self.cache_dtype,
            state if state is not None else self.state,
            batch,
            prompt_bucket,
            mesh=self.mesh,
            rules=self.rules,
            layer_loop=self.layer_loop,
            slots=self.slots_for(batch) if self.config.batching == "continuous" else None,
        )

    def check_memory(self, batch: int, prompt_bucket: int, state: nnx.State | None = None) -> MemoryEstimate:
        """The estimate; raises RolloutMemoryError naming what to lower when it exceeds the limit."""
        est = self.memory_estimate(batch, prompt_bucket, state)
        check_estimate(est, self.config, batch, prompt_bucket)
        return est

    # ---- the program ----------------------------------------------------------------------------------
    def slots_for(self, batch: int) -> int:
        """Decode slots of a continuous rollout of `batch` prompts (x n_samples rows)."""
        return resolve_slots(
            self.config.slots, batch * self.config.n_samples, batch_shards(self.mesh, self.rules)
        )

    def slot_levels_for(self, batch: int) -> tuple[int, ...]:
        """Slot counts of a continuous rollout of `batch` prompts: the slots, then the tail's levels."""
        return slot_levels(
            self.slots_for(batch), self.config.tail_compaction, batch_shards(self.mesh, self.rules)
        )

    def _program(self, bucket: int, batch: int):
        key = (bucket, batch)
        if key not in self._programs:
            args = (self.graphdef, self.config, self.cache_dtype, self.layer_loop)
            if self.config.batching == "continuous":
                levels = self.slot_levels_for(batch)
                groups = batch_shards(self.mesh, self.rules)
                fn = functools.partial(_continuous_rollout, *args, levels, groups)
                log.info(
                    "rollout: compiling continuous program for prompt bucket %d, batch %d, slots %s",
                    bucket,
                    batch,
                    " -> ".join(map(str, levels)),
                )
            else:
                fn = functools.partial(_rollout, *args)
                log.info("rollout: compiling program for prompt bucket %d, batch %d", bucket, batch)
            self._programs[key] = jax.jit(fn)
        return self._programs[key]

    def generate(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        rng: jax.Array,
        *,
        state: nnx.State | None = None,
        as_numpy: bool = True,
    ) -> RolloutOutput:
        """Sample config.n_samples responses for each LEFT-padded prompt row.

        prompt_ids, prompt_mask: int [B, P] host arrays. rng: a jax PRNG key. See RolloutOutput.
        """
        ids = np.asarray(prompt_ids)
        mask = np.asarray(prompt_mask)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B, P]")
        lengths = _check_left_padded(mask)
        cfg = self.config
        b, p = ids.shape
        longest = int(lengths.max())
        bucket = cfg.bucket_for(longest)  # one bucket for every chunk: the same program and padding
        state = state if state is not None else self.state
        m = cfg.micro_batches
        if b % m:
            raise ValueError(f"SamplingConfig.micro_batches={m} must divide the batch of {b} prompts")
        chunk = b // m
        self.check_memory(chunk, bucket, state)

        # Re-pad on the left to the bucket (drop all-padding columns first).
        ids_b = np.full((b, bucket), cfg.pad_id, np.int32)
        mask_b = np.zeros((b, bucket), np.int32)
        ids_b[:, bucket - longest :] = ids[:, p - longest :]
        mask_b[:, bucket - longest :] = mask[:, p - longest :]

        program = self._program(bucket, chunk)
        n = cfg.n_samples
        ctx = use_mesh(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()
        chunks, steps, slot_steps = [], 0, 0
        with ctx:
            for c in range(m):
                rows = slice(c * chunk, (c + 1) * chunk)
                if self.mesh is not None:
                    sh = named_sharding(("batch", "length"), (chunk, bucket), self.mesh, self.rules)
                    ids_d, mask_d = jax.device_put(ids_b[rows], sh), jax.device_put(mask_b[rows], sh)
                else:
                    ids_d, mask_d = jnp.asarray(ids_b[rows]), jnp.asarray(mask_b[rows])
                out = program(state, ids_d, mask_d, prompt_keys(rng, c * chunk, chunk))
                # Blocks: the next program may contain collectives (DESIGN.md).
                steps = max(steps, int(out.pop("steps")))
                slot_steps += int(out.pop("slot_steps"))
                chunks.append({k: np.asarray(v) for k, v in out.items()} if as_numpy else out)

        rep_ids = np.repeat(ids.astype(np.int32), n, axis=0)
        rep_mask = np.repeat(mask.astype(np.int32), n, axis=0)
        cat = np.concatenate if as_numpy else jnp.concatenate
        arrays = chunks[0] if m == 1 else {k: cat([o[k] for o in chunks]) for k in chunks[0]}
        return RolloutOutput(
            prompt_ids=rep_ids,
            prompt_mask=rep_mask,
            decode_steps=steps,
            decode_slot_steps=slot_steps,
            **arrays,
        )


_SAMPLERS: dict[tuple, Sampler] = {}


def generate(
    model: Decoder | tuple[Any, nnx.State],
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    config: SamplingConfig,
    rng: jax.Array,
    *,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    as_numpy: bool = True,
) -> RolloutOutput:
    """Functional entry point: a cached Sampler per (model structure, config, mesh) runs the rollout.

    See Sampler.generate and RolloutOutput for shapes; the compiled programs persist across calls.
    """
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    key = (graphdef, config, mesh, tuple(rules))
    sampler = _SAMPLERS.get(key)
    if sampler is None:
        sampler = _SAMPLERS[key] = Sampler((graphdef, state), config, mesh=mesh, rules=rules)
    return sampler.generate(prompt_ids, prompt_mask, rng, state=state, as_numpy=as_numpy)
