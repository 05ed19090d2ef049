"""Roofline lower bounds per compiled program, a predicted step time and the MFU it implies.

A program cannot run faster than max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) on one chip (Williams
et al. 2009), with the chip's dense bf16 peak and HBM bandwidth from gadjax.plan.topology.CHIPS.

Inputs per program and chip:
- FLOPs: the larger of XLA's cost analysis and the analytic model FLOPs / chips. XLA counts each loop
  body once (the layer scan, the micro-batch scan, the decode loop), so for scanned models its number
  is far too small; the analytic count (6ND + attention) covers every layer and token.
- bytes: the larger of XLA's "bytes accessed" (loop bodies once as well) and a floor from the state a
  program must stream: the decode loop reads the weights and the KV cache once per generated token; a
  train step reads and writes its parameters and optimizer state; the reference pass reads its weights.

Both are lower bounds, so the predicted step time (the sum over a step's programs) is optimistic and
the implied MFU (model FLOPs / (chips x peak x predicted time)) an upper bound. Communication, host work
and compile time are not in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gadjax.plan.topology import ChipSpec


def xla_cost(compiled: Any) -> tuple[float | None, float | None]:
    """(flops, bytes accessed) of a compiled program from XLA's cost analysis, None where unknown."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None, None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    get = lambda k: float(ca[k]) if ca.get(k) is not None else None
    return get("flops"), get("bytes accessed")


def bound(flops: float, nbytes: float, chip: ChipSpec) -> dict[str, Any]:
    """The roofline of `flops` and `nbytes` on one `chip`: seconds of each limit and which one binds."""
    compute_s = flops / chip.peak_bf16_flops
    memory_s = nbytes / chip.hbm_bytes_per_s
    return {
        "flops": flops,
        "bytes": nbytes,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bound_s": max(compute_s, memory_s),
        "limit": "compute" if compute_s >= memory_s else "memory",
        "intensity": flops / nbytes if nbytes else float("inf"),  # FLOPs per byte
        "ridge": chip.peak_bf16_flops / chip.hbm_bytes_per_s,  # intensity where the two limits meet
    }


def program_bound(
    xla_flops: float | None,
    xla_bytes: float | None,
    model_flops_per_chip: float,
    floor_bytes_per_chip: float,
    chip: ChipSpec,
) -> dict[str, Any]:
    """One program's roofline from XLA's counts and the analytic ones (the larger of each, see above)."""
    out = bound(
        max(xla_flops or 0.0, model_flops_per_chip), max(xla_bytes or 0.0, floor_bytes_per_chip), chip
    )
    out.update(xla_flops=xla_flops, xla_bytes=xla_bytes)
    return out


def step_prediction(
    programs: dict[str, dict[str, Any]], model_flops_all_chips: float, num_chips: int, chip: ChipSpec
):
    """Predicted seconds of one step (its programs run one after another) and the MFU that implies."""
    step_s = sum(p["bound_s"] for p in programs.values())
    mfu = model_flops_all_chips / (num_chips * chip.peak_bf16_flops * step_s) if step_s else None
    return {"step_s": step_s, "mfu": mfu}


def _profile_lengths(config: Any, seed: int = 0):
    """Response lengths of a step's rollout drawn from the paper's length profile scaled to the config's
    caps (gadjax.data.lengths)."""
    import numpy as np

    from gadjax.data.lengths import PAPER

    r = config.rollout
    profile = PAPER.scaled(config.data.max_prompt_tokens, r.max_new_tokens)
    return profile.sample_responses(np.random.default_rng(seed), config.data.batch_size * r.n_samples)


def rollout_decode_steps(config: Any, levels: Sequence[int] = (), seed: int = 0) -> int:
    """Decode steps of a step's rollout (all chunks) under the length profile: static runs each chunk to
    its longest row (almost always the cap at this batch), continuous as many iterations as its slot queue
    needs (gadjax.rollout.schedule; `levels`: its slot counts, gadjax.plan.analysis.rollout_slots)."""
    from gadjax.rollout import schedule

    r, lengths = config.rollout, _profile_lengths(config, seed)
    if r.batching == "continuous":
        return schedule.continuous_steps(lengths, levels[0], r.micro_batches)
    return schedule.static_steps(lengths, r.micro_batches)


def rollout_cache_steps(config: Any, levels: Sequence[int] = (), seed: int = 0) -> float:
    """Decode steps weighted by the share of the first level's slot cache each one reads: equal to
    rollout_decode_steps without tail compaction, fewer with it (the tail decodes fewer slots)."""
    from gadjax.rollout import schedule

    r = config.rollout
    if r.batching != "continuous" or len(levels) < 2:
        return float(rollout_decode_steps(config, levels, seed))
    lengths = _profile_lengths(config, seed)
    return schedule.continuous_slot_steps(lengths, levels, r.micro_batches) / levels[0]


def floor_bytes(config: Any, breakdown: dict[str, int], levels: Sequence[int] = ()) -> dict[str, float]:
    """Per chip bytes each program must move at least (see the module docstring), from our breakdown;
    `levels`: the continuous rollout's slot counts (gadjax.plan.analysis.rollout_slots)."""
    import jax.numpy as jnp

    shrink = jnp.dtype(config.model.dtype).itemsize / jnp.dtype(config.model.param_dtype).itemsize
    steps = rollout_decode_steps(config, levels)
    cache_steps = rollout_cache_steps(config, levels)
    g_state = breakdown["g_params"] + breakdown["g_opt_state"]
    d_state = breakdown["d_params"] + breakdown["d_opt_state"]
    return {
        # Every decode step of every chunk reads the (compute-dtype) weights and the cache it decodes from
        # (static: the chunk's B*N rows; continuous: the live level's slots).
        "rollout": steps * breakdown["g_params"] * shrink + cache_steps * breakdown["kv_cache_decode"],
        "ref_logp": breakdown["ref_params"] * shrink,
        "d_step": 2 * d_state,  # read and write the parameters and optimizer state
        "g_step": 2 * g_state,
    }
