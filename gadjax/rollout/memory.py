"""How much memory a rollout needs, estimated from shapes and shardings before anything compiles.

Static batching: the KV cache ([layers, rows, kv_heads, prompt bucket + max_new_tokens, head_dim], keys and
values, plus the prefill's un-repeated copy). Continuous batching (gadjax.rollout.continuous): the prompt
cache ([layers, prompts, kv_heads, prompt bucket, head_dim]) and the slot caches ([layers, slots, kv_heads,
prompt bucket + max_new_tokens + 1, head_dim]), plus the first tail level's (half as many slots) that the
tail compaction's gather holds beside them. Both: the parameters as sharded, the sampling buffers and,
for the unrolled decode loop, the per-layer copies. gadjax.rollout.sampler.Sampler checks it against the
device's limit and raises RolloutMemoryError naming what to lower.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from gadjax.models.decoder import kv_cache_bytes
from gadjax.parallel.rules import Rules, named_sharding
from gadjax.rollout.config import batch_shards, slot_levels

CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")  # the model's heads-major cache


class RolloutMemoryError(ValueError):
    """A rollout request whose KV cache + parameters would not fit the configured / device memory."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes a rollout program needs (from shapes and shardings, before compiling)."""

    kv_cache_bytes: int  # whole KV cache, all devices together
    kv_cache_bytes_per_device: int
    param_bytes_per_device: int
    work_bytes_per_device: int  # logits / noise buffers [B*N, V] and prefill attention scores
    limit_bytes: int | None
    layout_copy_bytes_per_device: int = 0  # layer_loop="unrolled": per-layer weights + cache copies

    @property
    def total_per_device(self) -> int:
        return (
            self.kv_cache_bytes_per_device
            + self.param_bytes_per_device
            + self.work_bytes_per_device
            + self.layout_copy_bytes_per_device
        )


def _shard_bytes(
    shape: tuple[int, ...], itemsize: int, logical: tuple, mesh: Mesh | None, rules: Rules
) -> int:
    if mesh is None:
        return int(np.prod(shape)) * itemsize
    shard = named_sharding(logical, shape, mesh, rules).shard_shape(shape)
    return int(np.prod(shard)) * itemsize


def _device_limit() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"])


def estimate_rollout_memory(
    model_config: Any,
    config: Any,
    cache_dtype: Any,
    state: Any,
    batch: int,
    prompt_bucket: int,
    *,
    mesh: Mesh | None,
    rules: Rules,
    layer_loop: str,
    slots: int | None = None,
) -> MemoryEstimate:
    """Per-device bytes of a rollout of `batch` prompts in `prompt_bucket` (x config.n_samples rows) for
    a model with `model_config` and parameters `state` (their shardings count), under SamplingConfig
    `config`; `slots`: the decode slots of a continuous rollout (None: the static layout)."""
    cfg, mc = config, model_config
    rows = batch * cfg.n_samples
    length = prompt_bucket + cfg.max_new_tokens
    item = cache_dtype.itemsize

    def cache(b: int, n: int) -> int:  # keys and values of b rows x n slots, per device
        return 2 * _shard_bytes(
            (mc.num_layers, b, mc.num_kv_heads, n, mc.head_dim), item, CACHE_AXES, mesh, rules
        )

    if slots is None:
        total_cache = kv_cache_bytes(mc, rows, length, cache_dtype)
        decode_cache = stacked_cache = cache(rows, length)
        prefill_cache = cache(batch, length)  # the prefill's un-repeated cache lives beside it
        step_rows, prefill_len = rows, length
    else:
        total_cache = kv_cache_bytes(mc, slots, length + 1, cache_dtype) + kv_cache_bytes(
            mc, batch, prompt_bucket, cache_dtype
        )
        decode_cache = stacked_cache = cache(slots, length + 1)
        levels = slot_levels(slots, cfg.tail_compaction, batch_shards(mesh, rules))
        if len(levels) > 1:  # the first compaction holds both slot caches at once
            total_cache += kv_cache_bytes(mc, levels[1], length + 1, cache_dtype)
            decode_cache += cache(levels[1], length + 1)
        prefill_cache = cache(batch, prompt_bucket)  # the prompt cache, read by every insert
        step_rows, prefill_len = slots, prompt_bucket
    per_dev_cache = decode_cache + prefill_cache
    params = 0
    for leaf in jax.tree.leaves(state):
        shard = leaf.sharding.shard_shape(leaf.shape) if hasattr(leaf, "sharding") else leaf.shape
        params += int(np.prod(shard)) * leaf.dtype.itemsize
    layout_copy = 0
    if layer_loop == "unrolled":
        # The per-layer weight and cache copies live beside the stacked originals.
        layout_copy = params + stacked_cache + (0 if slots is None else prefill_cache)
    # ~4 float32 [rows, V] buffers per step (logits, log-softmax, processed logits, noise), the first
    # token's of every row for continuous batching, and the prefill's float32 attention scores of one
    # layer [B, heads, P, cache length].
    vocab = lambda r: 4 * _shard_bytes((r, mc.vocab_size), 4, ("batch", "act_vocab"), mesh, rules)
    work = vocab(rows) + (0 if slots is None else vocab(step_rows))
    work += _shard_bytes(
        (batch, mc.num_heads, prompt_bucket, prefill_len),
        4,
        ("batch", "act_heads", None, None),
        mesh,
        rules,
    )
    limit = cfg.max_memory_bytes if cfg.max_memory_bytes is not None else _device_limit()
    return MemoryEstimate(total_cache, per_dev_cache, params, work, limit, layout_copy)


def check_estimate(est: MemoryEstimate, cfg: Any, batch: int, prompt_bucket: int) -> None:
    """Raise RolloutMemoryError naming what to lower when `est` exceeds its limit."""
    if est.limit_bytes is not None and est.total_per_device > est.limit_bytes:
        gib = 1 << 30
        raise RolloutMemoryError(
            f"rollout needs {est.total_per_device / gib:.2f} GiB per device but the limit is "
            f"{est.limit_bytes / gib:.2f} GiB: KV cache {est.kv_cache_bytes_per_device / gib:.2f} GiB "
            f"(batch {batch} x n_samples {cfg.n_samples} rows, length prompt bucket {prompt_bucket} + "
            f"max_new_tokens {cfg.max_new_tokens}), params {est.param_bytes_per_device / gib:.2f} GiB, "
            f"sampling buffers {est.work_bytes_per_device / gib:.2f} GiB, per-layer decode copies "
            f"{est.layout_copy_bytes_per_device / gib:.2f} GiB. Lower the rollout batch size (or raise "
            f"micro_batches, now {cfg.micro_batches}: the batch in chunks), n_samples, slots (continuous "
            f"batching, now {cfg.slots or 'auto'}), "
            f"max_new_tokens or the prompt length, shard the batch over more devices, or set "
            f"layer_loop='scan' (no per-layer copies)."
        )
