"""Per-chip bytes and FLOPs: XLA's memory / cost analyses, our breakdown from shapes, analytic model FLOPs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from gadjax.plan.state import AbstractRun, per_chip_bytes


def _memory(compiled) -> dict[str, int]:
    ma = compiled.memory_analysis()
    get = lambda k: int(getattr(ma, k, 0) or 0)
    mem = {
        "argument": get("argument_size_in_bytes"),
        "output": get("output_size_in_bytes"),
        "alias": get("alias_size_in_bytes"),
        "temp": get("temp_size_in_bytes"),
        "generated_code": get("generated_code_size_in_bytes"),
    }
    mem["peak"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["generated_code"]
    return mem


def _path_name(path: tuple) -> str:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")


def _largest_arrays(run: AbstractRun, k: int = 5) -> list[dict[str, Any]]:
    items = []
    trees = (("g", run.g_state), ("d", run.d_state), ("ref", run.ref_params), ("g_base", run.g_base))
    for tag, tree in (*trees, ("d_base", None if run.d_base_shared else run.d_base)):
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
            nbytes = int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
            shard = x.sharding.shard_shape(x.shape)
            items.append(
                {
                    "name": f"{tag}/{_path_name(path)}",
                    "shape": list(x.shape),
                    "dtype": str(jnp.dtype(x.dtype)),
                    "spec": str(x.sharding.spec),
                    "global_bytes": nbytes,
                    "per_chip_bytes": int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize,
                }
            )
    items.sort(key=lambda d: -d["global_bytes"])
    return items[:k]


def rollout_slots(config: ConfigDict, mesh: Any) -> tuple[int, ...]:
    """Slot counts of a continuous rollout chunk (the decode slots, then the tail compaction's levels), as
    the Sampler resolves them on `mesh`."""
    from gadjax.parallel.rules import DEFAULT_RULES
    from gadjax.rollout.config import batch_shards, resolve_slots, slot_levels

    rows = config.data.batch_size // config.rollout.micro_batches * config.rollout.n_samples
    shards = batch_shards(mesh, DEFAULT_RULES)
    slots = resolve_slots(config.rollout.slots, rows, shards)
    return slot_levels(slots, config.rollout.tail_compaction, shards)


def our_breakdown(config: ConfigDict, run: AbstractRun) -> dict[str, int]:
    """Per-chip bytes from shapes and shardings (what each part of the run keeps on a chip)."""
    from gadjax.parallel.rules import named_sharding
    from gadjax.rollout.memory import CACHE_AXES

    mesh, mc = run.mesh, run.model_config
    g_params = per_chip_bytes(run.g_state.params)
    d_params = per_chip_bytes(run.d_state.params)
    out = {
        "g_params": g_params,
        "g_opt_state": per_chip_bytes(run.g_state.opt_state),
        "g_grads": g_params,  # one gradient accumulator in param dtype (the scan carry)
        "d_params": d_params,
        "d_opt_state": per_chip_bytes(run.d_state.opt_state),
        "d_grads": d_params,
        "ref_params": per_chip_bytes(run.ref_params),
    }
    for tag, base in (("g", run.g_base), ("d", run.d_base)):  # LoRA: the frozen bases
        if base is not None:
            shared = tag == "d" and run.d_base_shared
            out[f"{tag}_frozen_base" + ("_shared_with_g" if shared else "")] = per_chip_bytes(base)
    b, n = config.data.batch_size, config.rollout.n_samples
    p, r = config.data.max_prompt_tokens, config.rollout.max_new_tokens
    item = jnp.dtype(config.model.dtype).itemsize

    def shard(shape, logical, itemsize):
        return int(np.prod(named_sharding(logical, shape, mesh).shard_shape(shape))) * itemsize

    kv = lambda rows, t=p + r: (
        2 * shard((mc.num_layers, rows, mc.num_kv_heads, t, mc.head_dim), CACHE_AXES, item)
    )
    chunk = b // config.rollout.micro_batches  # prompts whose caches exist at once
    if config.rollout.batching == "continuous":  # slot caches (+ scratch column) and the prompt cache
        levels = rollout_slots(config, mesh)  # the tail compaction's gather holds two levels at once
        out["kv_cache"] = sum(kv(s, p + r + 1) for s in levels[:2]) + kv(chunk, p)
        out["kv_cache_decode"] = kv(levels[0], p + r + 1)  # what each decode step reads (before the tail)
    else:
        out["kv_cache"] = kv(chunk * n) + kv(chunk)  # the N-times repeated cache + the prefill's
        out["kv_cache_decode"] = kv(chunk * n)
    # Activations of one G micro-batch (estimate): per-layer carries kept for the backward pass
    # (all layer outputs without remat, x ~10 per layer without remat), one layer's recomputation
    # (f32 attention scores + probs + their grads, MLP intermediates), and a log-prob chunk's [C, V] f32.
    rows_chip = max(1, shard((b * n // config.train.micro_batches_g,), ("batch",), 1))
    t = p + r
    heads_chip = shard((mc.num_heads,), ("act_heads",), 1)
    mlp_chip = shard((mc.intermediate_size,), ("act_mlp",), 1)
    vocab_chip = shard((mc.vocab_size,), ("act_vocab",), 1)
    per_layer_saved = rows_chip * t * mc.hidden_size * item * (1 if config.model.remat == "full" else 10)
    # The dense (xla) attention holds [heads, T, T] float32 scores; the blocked backends one block of keys.
    from gadjax.models.attention import resolve

    dense = resolve(config.model.attention, platform="tpu", dtype=config.model.dtype) == "xla"
    keys = t if dense else min(t, 512)
    layer_work = rows_chip * t * (3 * heads_chip * keys * 4 + 4 * mlp_chip * item + 8 * mc.hidden_size * item)
    logits = 3 * rows_chip * min(config.train.logprob_chunk, r) * vocab_chip * 4
    out["activations_estimate"] = mc.num_layers * per_layer_saved + layer_work + logits
    return out


def model_flops_per_step(config: ConfigDict, mc) -> dict[str, float]:
    """Analytic model FLOPs of one gad step (6ND for training, 2ND forward, plus attention), all chips."""
    b, n = config.data.batch_size, config.rollout.n_samples
    p, r_t, r_s = (
        config.data.max_prompt_tokens,
        config.data.max_response_tokens,
        config.rollout.max_new_tokens,
    )
    params = mc.param_count()
    attn = lambda t: 2 * 2 * mc.num_layers * t * t * mc.num_heads * mc.head_dim  # QK^T + PV, causal ~ /2
    fwd = lambda rows, t: rows * (2 * params * t + attn(t) / 2)
    rows = b * n
    return {
        "rollout": fwd(b, p) + fwd(rows, r_s),  # prefill + decode (decode attention ~ ignored)
        "ref_logp": fwd(rows, p + r_s),
        "d_step": 3 * (fwd(b, p + r_t) + fwd(rows, p + r_s)),
        "g_step": 3 * fwd(rows, p + r_s),
    }
