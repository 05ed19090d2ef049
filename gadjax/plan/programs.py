"""The programs of one gad step (rollout, ref_logp, d_step, g_step): jitted functions + abstract args."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from gadjax.plan.state import AbstractRun, _optimizer

PROGRAMS = ("rollout", "ref_logp", "d_step", "g_step")


def _sds(shape: Sequence[int], dtype: Any, mesh: Mesh, logical: Sequence[str | None]) -> jax.ShapeDtypeStruct:
    from gadjax.parallel.rules import named_sharding

    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=named_sharding(logical, shape, mesh))


def _rows(shape: Sequence[int], dtype: Any, mesh: Mesh) -> jax.ShapeDtypeStruct:
    return _sds(shape, dtype, mesh, ("batch",) + (None,) * (len(shape) - 1))


def _rng(mesh: Mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))


@dataclasses.dataclass
class ProgramSpec:
    name: str
    fn: Callable
    args: tuple
    resident_args: Any  # the long-lived state among args (for the "other resident state" sum)
    what: str


def program_specs(config: ConfigDict, run: AbstractRun) -> list[ProgramSpec]:
    """The four programs of a gad step, as jitted functions and abstract sharded arguments."""
    from gadjax.algo.steps import (
        PolicyLossConfig,
        make_discriminator_step,
        make_logprob_fn,
        make_policy_step,
    )
    from gadjax.parallel.programs import jit_step
    from gadjax.parallel.rules import DEFAULT_RULES
    from gadjax.plan.analysis import rollout_slots
    from gadjax.rollout.config import SamplingConfig, batch_shards, resolve_layer_loop
    from gadjax.rollout.continuous import _continuous_rollout
    from gadjax.rollout.decode import _rollout

    mesh, mc = run.mesh, run.model_config
    b, n = config.data.batch_size, config.rollout.n_samples
    p, r_t, r_s = (
        config.data.max_prompt_tokens,
        config.data.max_response_tokens,
        config.rollout.max_new_tokens,
    )
    rows = b * n
    m_g, m_d = config.train.micro_batches_g, config.train.micro_batches_d
    chunk = config.train.logprob_chunk
    i32, f32 = jnp.int32, jnp.float32
    specs = []

    # rollout: the Sampler's own program (gadjax.rollout.decode._rollout), one prompt bucket = P, for one
    # chunk of rollout.micro_batches (the Sampler runs it once per chunk).
    m_r = config.rollout.micro_batches
    scfg = SamplingConfig(
        max_new_tokens=r_s,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        top_k=config.rollout.top_k,
        n_samples=n,
        stop_ids=frozenset(mc.eos_token_ids),
        prompt_buckets=(p,),
        layer_loop=config.rollout.layer_loop,
        micro_batches=m_r,
        batching=config.rollout.batching,
        slots=config.rollout.slots,
        tail_compaction=config.rollout.tail_compaction,
    )
    cache_dtype = jnp.dtype(config.model.dtype)
    # LoRA: the sampler gets the plain model on the base with the adapted weights replaced by merged
    # copies (transient); the base's other leaves are shared, so they count as resident.
    lora_g = run.g_base is not None
    params = run.g_base if lora_g else run.g_state.params
    rollout_resident = _shared_base_leaves(run) if lora_g else params
    ids = _sds((b // m_r, p), i32, mesh, ("batch", "length"))
    layer_loop = resolve_layer_loop(scfg.layer_loop, mesh)  # the target's devices decide, as in Sampler
    graphdef = run.g_plain_graphdef if lora_g else run.g_graphdef
    args = (graphdef, scfg, cache_dtype, layer_loop)
    if scfg.batching == "continuous":
        levels = rollout_slots(config, mesh)  # as the Sampler resolves them on this mesh
        groups = batch_shards(mesh, DEFAULT_RULES)
        rollout = jax.jit(functools.partial(_continuous_rollout, *args, levels, groups))
        tail = f" (tail: {' -> '.join(map(str, levels[1:]))} slots)" if len(levels) > 1 else ""
        what = f"{levels[0]} slots{tail} x KV cache {p}+{r_s}+1 tokens, prompt cache {b // m_r} x {p}"
    else:
        rollout = jax.jit(functools.partial(_rollout, *args))
        what = f"KV cache {p}+{r_s} tokens"
    key = _rng(mesh)
    keys = jax.ShapeDtypeStruct((b // m_r,), key.dtype, sharding=key.sharding)  # one key per prompt
    specs.append(
        ProgramSpec(
            "rollout",
            rollout,
            (params, ids, ids, keys),
            rollout_resident,
            f"{b // m_r} prompts x {n} samples (x {m_r} chunks), {scfg.batching} batching, {what}",
        )
    )

    # reference log-probs, in G-step-sized micro-batches (a lax.map: one micro-batch's activations live).
    # SPEC.md "Temperature": the policy update's log-probs use the rollout temperature (greedy: 1).
    t_lp = float(config.rollout.temperature) if config.rollout.temperature > 0 else 1.0
    ref_logprobs = make_logprob_fn(run.g_graphdef, chunk_size=chunk, micro_batches=m_g, temperature=t_lp)

    g_batch = {
        "prompt_ids": _rows((rows, p), i32, mesh),
        "prompt_mask": _rows((rows, p), i32, mesh),
        "response_ids": _rows((rows, r_s), i32, mesh),
        "response_mask": _rows((rows, r_s), i32, mesh),
    }
    ref_jit = jax.jit(ref_logprobs, out_shardings=g_batch["response_ids"].sharding)
    ref_in = (run.ref_params, run.g_base) if lora_g else run.ref_params  # LoRA: adapters + G's base
    specs.append(
        ProgramSpec(
            "ref_logp",
            ref_jit,
            (ref_in, g_batch),
            ref_in,
            f"{rows} rows x {p}+{r_s} tokens, {m_g} micro-batches",
        )
    )

    # discriminator step.
    d_batch = {
        "prompt_ids": _rows((b, p), i32, mesh),
        "prompt_mask": _rows((b, p), i32, mesh),
        "response_ids": _rows((b, r_t), i32, mesh),
        "response_mask": _rows((b, r_t), i32, mesh),
        "student_ids": _rows((rows, r_s), i32, mesh),
        "student_mask": _rows((rows, r_s), i32, mesh),
    }
    d_step = make_discriminator_step(
        run.d_graphdef,
        _optimizer(config.optim_d, 1000),
        n_samples=n,
        loss_type=config.disc.loss,
        micro_batches=m_d,
    )
    d_jit = jit_step(d_step, _shardings(run.d_state), mesh, d_batch, frozen_shardings=_shardings(run.d_base))
    d_frozen = () if run.d_base is None else (run.d_base,)
    specs.append(
        ProgramSpec(
            "d_step",
            d_jit,
            (run.d_state, d_batch, _rng(mesh), *d_frozen),
            (run.d_state, *d_frozen),
            f"{b} teacher ({p}+{r_t}) + {rows} student ({p}+{r_s}) sequences, {m_d} micro-batches",
        )
    )

    # policy step.
    loss_cfg = PolicyLossConfig(**config.loss.to_dict())
    g_step = make_policy_step(
        run.g_graphdef,
        _optimizer(config.optim_g, 1000),
        loss_cfg,
        micro_batches=m_g,
        chunk_size=chunk,
        temperature=t_lp,
    )
    pg_batch = dict(g_batch, advantages=_rows((rows,), f32, mesh), ref_logprobs=_rows((rows, r_s), f32, mesh))
    g_jit = jit_step(g_step, _shardings(run.g_state), mesh, pg_batch, frozen_shardings=_shardings(run.g_base))
    g_frozen = () if run.g_base is None else (run.g_base,)
    specs.append(
        ProgramSpec(
            "g_step",
            g_jit,
            (run.g_state, pg_batch, _rng(mesh), *g_frozen),
            (run.g_state, *g_frozen),
            f"{rows} rows x {p}+{r_s} tokens, {m_g} micro-batches",
        )
    )
    if config.train.packing:  # the score and train passes on packed rows, compiled for the worst case
        from gadjax.plan.packed import packed_specs

        specs = specs[:1] + packed_specs(config, run, _sds, _rng, _shardings, ProgramSpec)
    return specs


def _shardings(tree: Any) -> Any:
    return None if tree is None else jax.tree.map(lambda x: x.sharding, tree)


def _shared_base_leaves(run: AbstractRun) -> list[Any]:
    """G's frozen base leaves that a LoRA rollout uses as they are (not adapted: embeddings, norms...)."""
    from flax import nnx

    from gadjax.models import lora

    adapted = jax.eval_shape(lambda p, b: lora.merged_weights(p, b, 1.0), run.g_state.params, run.g_base)
    return [leaf for path, leaf in nnx.to_flat_state(run.g_base) if path not in adapted]
