"""Compile-only memory plan: will this config fit a TPU slice? Answered on a CPU host, no TPU needed.

    python -m gadjax.plan --config configs/v5p.py [--topology v5p-64] [--config.key=value ...]

With the `tpu` extra installed (jax[tpu] brings libtpu), `jax.experimental.topologies` describes the
devices of a TPU slice that does not exist here; every program of a GAD step is lowered over a mesh of
those devices from ABSTRACT inputs (jax.eval_shape: no parameter is ever allocated) and compiled for
that chip, as MaxText's train_compile does. XLA's own `memory_analysis` (per chip) and `cost_analysis`
come back; a program that cannot fit fails to compile with RESOURCE_EXHAUSTED.

Programs (the device side of one SPEC.md gad step):
  rollout    the sampler's prefill + decode program: B prompts x N samples, P + R tokens of KV cache
  ref_logp   the frozen reference's log-probs of the B*N samples (in micro-batches of the G step's size)
  d_step     the discriminator step: teacher responses vs the N student samples per prompt
  g_step     the GRPO policy step over B*N rows with train.micro_batches_g micro-batches

All long-lived state (G and D TrainStates, the reference parameters) stays in HBM for the whole run, so
a program fits only if its own peak (arguments + outputs - aliased + temporaries + code) PLUS the
long-lived state it does not take as an argument fits the chip: XLA only checks the first part; this
module checks both and raises `PlanDoesNotFitError` naming the numbers and what to change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

GiB = 1 << 30
PROGRAMS = ("rollout", "ref_logp", "d_step", "g_step")


class PlanError(RuntimeError):
    """The plan could not run (libtpu missing, unknown topology, bad mesh)."""


class PlanDoesNotFitError(PlanError):
    """A program (plus the long-lived state) needs more HBM per chip than the chip has."""


# --- topologies ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    generation: str  # v4 | v5p | v5e | v6e
    topology_prefix: str  # libtpu's name: v4 | v5 | v5e | v6e
    chip_config: str  # megacore (one JAX device per chip) | default
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, dense
    cores_per_chip_in_name: int  # v4-N / v5p-N count TensorCores (2 per chip); v5e / v6e count chips
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)


CHIPS = {
    "v4": ChipSpec("v4", "v4", "megacore", 32 * GiB, 275e12, 2, 3),
    "v5p": ChipSpec("v5p", "v5", "megacore", 95 * GiB, 459e12, 2, 3),
    "v5e": ChipSpec("v5e", "v5e", "default", 16 * GiB, 197e12, 1, 2),
    "v6e": ChipSpec("v6e", "v6e", "default", 32 * GiB, 918e12, 1, 2),
}
_PREFIX_TO_GEN = {spec.topology_prefix: gen for gen, spec in CHIPS.items()}

# Chip grids of the standard slice shapes (Cloud TPU docs: v4 / v5p 3-D tori, v5e / v6e 2-D).
_GRIDS_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
    4096: (16, 16, 16),
}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it, e.g. v5p-64
    topology_name: str  # libtpu's, e.g. v5:2x4x4
    chip: ChipSpec
    grid: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return int(np.prod(self.grid))


def parse_topology(name: str) -> Topology:
    """'v5p-64' (Cloud TPU accelerator type) or 'v5:2x4x4' (libtpu topology string) -> Topology."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip())
    if m:
        chip = CHIPS[m.group(1)]
        n = int(m.group(2))
        chips, rem = divmod(n, chip.cores_per_chip_in_name)
        grids = _GRIDS_3D if chip.dims == 3 else _GRIDS_2D
        if rem or chips not in grids:
            sizes = sorted(k * chip.cores_per_chip_in_name for k in grids)
            raise PlanError(f"topology {name!r}: unknown {chip.generation} slice size; known: {sizes}")
        grid = grids[chips]
        return Topology(name, f"{chip.topology_prefix}:{'x'.join(map(str, grid))}", chip, grid)
    m = re.fullmatch(r"(v4|v5|v5e|v6e):(\d+(?:x\d+){1,2})", name.strip())
    if m:
        chip = CHIPS[_PREFIX_TO_GEN[m.group(1)]]
        grid = tuple(int(x) for x in m.group(2).split("x"))
        return Topology(name, name.strip(), chip, grid)
    raise PlanError(
        f"topology {name!r}: expected an accelerator type like v5p-64, v4-8, v5e-16, v6e-8 or a libtpu "
        "topology string like v5:2x4x4"
    )


def topology_devices(topo: Topology) -> list[Any]:
    """The (abstract) devices of a TPU slice, from libtpu; no TPU and no network needed."""
    if "WRAP" in os.environ:  # libtpu reads it and aborts the process (DESIGN.md)
        raise PlanError("the environment variable WRAP is set; libtpu aborts when it is: unset it")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise PlanError(
            "the compile-only plan needs libtpu: pip install -e '.[tpu]' (or jax[tpu]==<jax version>)"
        ) from e
    # Other jax processes on this host (tests, a training run) load libtpu too and hold its lockfile;
    # compiling for a described topology touches no chip, so sharing the library is safe.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topo.topology_name,
        chip_config_name=topo.chip.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
        wrap=(True, True, True) if topo.chip.dims == 3 else (False, False, False),
    )
    return list(desc.devices)


# --- abstract state --------------------------------------------------------------------------------


def model_config_of(config: ConfigDict):
    """ModelConfig from model.random_init.hf_config (no files needed) or model.path's config.json."""
    from gadjax.models.config import ModelConfig

    hf = dict(config.model.random_init.hf_config or {})
    if hf:
        return ModelConfig.from_hf_dict(hf, source="config.model.random_init.hf_config")
    path = os.path.join(config.model.path, "config.json")
    if not config.model.path or not os.path.exists(path):
        raise PlanError(
            "the plan needs the model's shape: set model.random_init.hf_config (a HF config.json dict) "
            f"or point model.path at a directory with config.json (tried {path!r})"
        )
    with open(path) as f:
        return ModelConfig.from_hf_dict(json.load(f), source=path)


def validate_for_plan(config: ConfigDict) -> None:
    """config.validate without the checks that need files on this machine (model, data, init_from)."""
    from gadjax.config import validate

    c = ConfigDict(config.to_dict())
    c.model.path, c.model.random_init.enabled = "", True
    c.data.train = [__file__]
    c.init_from = ""
    validate(c)


def _optimizer(o: ConfigDict, total_steps: int):
    from gadjax.algo.optim import make_optimizer

    return make_optimizer(
        o.lr,
        o.schedule,
        o.warmup_steps,
        max(total_steps, o.warmup_steps + 1),
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        grad_clip_norm=o.grad_clip_norm,
        weight_decay_mask=o.weight_decay_mask,
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying the matching leaves of `shardings` (same leaf order)."""
    sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    leaves, treedef = jax.tree.flatten(abstract)
    if len(sh) != len(leaves):
        raise PlanError(f"internal: {len(leaves)} arrays but {len(sh)} shardings")
    return treedef.unflatten(
        [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, sh, strict=True)]
    )


def per_chip_bytes(tree: Any) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (the largest shard of each)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return total


def _path_name(path: tuple) -> str:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")


@dataclasses.dataclass
class AbstractRun:
    mesh: Mesh
    g_graphdef: Any
    d_graphdef: Any
    g_state: Any  # TrainState of sharded ShapeDtypeStructs
    d_state: Any
    ref_params: Any
    model_config: Any
    notes: list[str] = dataclasses.field(default_factory=list)


def build_abstract(config: ConfigDict, mesh: Mesh) -> AbstractRun:
    """G (Decoder) + optimizer, D (Discriminator) + optimizer, reference params: shapes and shardings only."""
    from gadjax.algo.steps import TrainState
    from gadjax.models.decoder import Decoder
    from gadjax.models.discriminator import Discriminator
    from gadjax.models.sharding import state_shardings
    from gadjax.parallel.programs import train_state_shardings

    mc = model_config_of(config)
    dt, pdt = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
    remat = config.model.remat
    g_abs = nnx.eval_shape(lambda: Decoder(mc, rngs=nnx.Rngs(0), dtype=dt, param_dtype=pdt, remat=remat))
    d_abs = nnx.eval_shape(
        lambda: Discriminator(
            mc,
            rngs=nnx.Rngs(0),
            dtype=dt,
            param_dtype=pdt,
            remat=remat,
            head_init=config.disc.head_init,
            head_std=config.disc.head_std,
        )
    )
    steps = int(config.train.steps) or 1000
    out = {}
    notes: set[str] = set()
    for tag, module, optim in (("g", g_abs, config.optim_g), ("d", d_abs, config.optim_d)):
        graphdef, params = nnx.split(module, nnx.Param)
        opt = _optimizer(optim, steps)
        abs_state = jax.eval_shape(lambda p, opt=opt: TrainState.create(p, opt), params)
        psh = state_shardings(params, mesh)
        sh = train_state_shardings(abs_state, psh, mesh)
        out[tag] = (graphdef, with_shardings(abs_state, sh), with_shardings(params, psh))
    return AbstractRun(
        mesh=mesh,
        g_graphdef=out["g"][0],
        d_graphdef=out["d"][0],
        g_state=out["g"][1],
        d_state=out["d"][1],
        ref_params=out["g"][2],  # the frozen reference: G's parameters at the start of the stage
        model_config=mc,
        notes=sorted(notes),
    )


# --- programs --------------------------------------------------------------------------------------


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
    from gadjax.rollout.sampler import SamplingConfig, _rollout, resolve_layer_loop

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

    # rollout: the Sampler's own program (gadjax.rollout.sampler._rollout), one prompt bucket = P.
    scfg = SamplingConfig(
        max_new_tokens=r_s,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        top_k=config.rollout.top_k,
        n_samples=n,
        stop_ids=frozenset(mc.eos_token_ids),
        prompt_buckets=(p,),
        layer_loop=config.rollout.layer_loop,
    )
    cache_dtype = jnp.dtype(config.model.dtype)
    params = run.g_state.params
    ids = _sds((b, p), i32, mesh, ("batch", "length"))
    layer_loop = resolve_layer_loop(scfg.layer_loop, mesh)  # the target's devices decide, as in Sampler
    rollout = jax.jit(functools.partial(_rollout, run.g_graphdef, scfg, cache_dtype, layer_loop))
    specs.append(
        ProgramSpec(
            "rollout",
            rollout,
            (params, ids, ids, _rng(mesh)),
            params,
            f"{b} prompts x {n} samples, KV cache {p}+{r_s} tokens",
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
    specs.append(
        ProgramSpec(
            "ref_logp",
            ref_jit,
            (run.ref_params, g_batch),
            run.ref_params,
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
    d_jit = jit_step(d_step, _shardings(run.d_state), mesh, d_batch)
    specs.append(
        ProgramSpec(
            "d_step",
            d_jit,
            (run.d_state, d_batch, _rng(mesh)),
            run.d_state,
            f"{b} teacher ({p}+{r_t}) + {rows} student ({p}+{r_s}) sequences, {m_d} micro-batches",
        )
    )

    # policy step.
    loss_cfg = PolicyLossConfig(
        clip_eps=config.loss.clip_eps,
        clip_ratio_c=config.loss.clip_ratio_c,
        loss_agg_mode=config.loss.loss_agg_mode,
        kl_beta=config.loss.kl_beta,
        kl_kind=config.loss.kl_kind,
        entropy_coeff=config.loss.entropy_coeff,
    )
    g_step = make_policy_step(
        run.g_graphdef,
        _optimizer(config.optim_g, 1000),
        loss_cfg,
        micro_batches=m_g,
        chunk_size=chunk,
        temperature=t_lp,
    )
    pg_batch = dict(g_batch, advantages=_rows((rows,), f32, mesh), ref_logprobs=_rows((rows, r_s), f32, mesh))
    g_jit = jit_step(g_step, _shardings(run.g_state), mesh, pg_batch)
    specs.append(
        ProgramSpec(
            "g_step",
            g_jit,
            (run.g_state, pg_batch, _rng(mesh)),
            run.g_state,
            f"{rows} rows x {p}+{r_s} tokens, {m_g} micro-batches",
        )
    )
    return specs


def _shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


# --- compile and report ----------------------------------------------------------------------------

_OOM_USED = re.compile(r"Used\s+([\d.]+)([KMGT]?)i?B?\s+of\s+([\d.]+)([KMGT]?)i?B?\s+hbm", re.I)
_OOM_REQUIRED = re.compile(
    r"required for ([\w ]+?) \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", re.I
)
_OOM_EXCEEDED = re.compile(r"Exceeded hbm capacity by\s+([\d.]+)([KMGT]?)", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_oom(message: str) -> dict[str, float]:
    """Bytes used / capacity / excess from XLA's RESOURCE_EXHAUSTED text (whatever of them it names)."""
    out: dict[str, float] = {}
    m = _OOM_REQUIRED.search(message)  # jax 0.10 / libtpu 0.0.42: "... required for HLO temporaries (2.08T)"
    if m:
        out[m.group(1).strip().replace(" ", "_").lower() + "_bytes"] = (
            float(m.group(2)) * _UNITS[m.group(3).upper()]
        )
        out["capacity_bytes"] = float(m.group(4)) * _UNITS[m.group(5).upper()]
    m = _OOM_USED.search(message)
    if m:
        out["used_bytes"] = float(m.group(1)) * _UNITS[m.group(2).upper()]
        out["capacity_bytes"] = float(m.group(3)) * _UNITS[m.group(4).upper()]
    m = _OOM_EXCEEDED.search(message)
    if m:
        out["exceeded_bytes"] = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not out:  # older formats: any "<number><unit>" sizes, largest first
        sizes = [float(v) * _UNITS[u.upper()] for v, u in re.findall(r"([\d.]+)\s*([KMGT])i?B\b", message)]
        if sizes:
            out["largest_size_in_message_bytes"] = max(sizes)
    return out


def advice(config: ConfigDict, program: str, num_chips: int) -> str:
    """What to change, with the config's current values, most effective first for `program`."""
    t, r = config.train, config.rollout
    tips = [f"use a larger slice (more chips than {num_chips})"]
    if program == "g_step" or program == "ref_logp":
        tips.append(f"raise train.micro_batches_g (now {t.micro_batches_g}; fewer rows live at once)")
    if program == "d_step":
        tips.append(f"raise train.micro_batches_d (now {t.micro_batches_d})")
    if program != "rollout" and config.model.remat != "full":
        tips.append(f"set model.remat='full' (now {config.model.remat!r})")
    tips.append(
        f"lower rollout.n_samples ({r.n_samples}), data.batch_size ({config.data.batch_size}), "
        f"rollout.max_new_tokens ({r.max_new_tokens}) or data.max_prompt_tokens "
        f"({config.data.max_prompt_tokens})"
    )
    tips.append(f"shard weights wider (a larger fsdp entry in mesh.shape, now {tuple(config.mesh.shape)})")
    return "To fit: " + "; ".join(tips)


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


def _flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    f = (ca or {}).get("flops")
    return float(f) if f is not None else None


def _largest_arrays(run: AbstractRun, k: int = 5) -> list[dict[str, Any]]:
    items = []
    for tag, tree in (("g", run.g_state), ("d", run.d_state), ("ref", run.ref_params)):
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


def our_breakdown(config: ConfigDict, run: AbstractRun) -> dict[str, int]:
    """Per-chip bytes from shapes and shardings (what each part of the run keeps on a chip)."""
    from gadjax.parallel.rules import named_sharding
    from gadjax.rollout.sampler import CACHE_AXES

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
    b, n = config.data.batch_size, config.rollout.n_samples
    p, r = config.data.max_prompt_tokens, config.rollout.max_new_tokens
    item = jnp.dtype(config.model.dtype).itemsize

    def shard(shape, logical, itemsize):
        return int(np.prod(named_sharding(logical, shape, mesh).shard_shape(shape))) * itemsize

    kv = lambda rows: 2 * shard((mc.num_layers, rows, p + r, mc.num_kv_heads, mc.head_dim), CACHE_AXES, item)
    out["kv_cache"] = kv(b * n) + kv(b)  # the N-times repeated cache + the prefill's
    # Activations of one G micro-batch (estimate): per-layer carries kept for the backward pass
    # (all layer outputs without remat, x ~10 per layer without remat), one layer's recomputation
    # (f32 attention scores + probs + their grads, MLP intermediates), and a log-prob chunk's [C, V] f32.
    rows_chip = max(1, shard((b * n // config.train.micro_batches_g,), ("batch",), 1))
    t = p + r
    heads_chip = shard((mc.num_heads,), ("act_heads",), 1)
    mlp_chip = shard((mc.intermediate_size,), ("act_mlp",), 1)
    vocab_chip = shard((mc.vocab_size,), ("act_vocab",), 1)
    per_layer_saved = rows_chip * t * mc.hidden_size * item * (1 if config.model.remat == "full" else 10)
    layer_work = rows_chip * t * (3 * heads_chip * t * 4 + 4 * mlp_chip * item + 8 * mc.hidden_size * item)
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


def make_plan_mesh(config: ConfigDict, devices: Sequence[Any]) -> Mesh:
    from gadjax.parallel.mesh import make_mesh

    try:
        return make_mesh(tuple(config.mesh.shape), devices)
    except ValueError as e:
        raise PlanError(f"config.mesh.shape: {e}") from e


def run_plan(
    config: ConfigDict,
    topology: str,
    programs: Sequence[str] = PROGRAMS,
    *,
    devices: Sequence[Any] | None = None,
    hbm_bytes: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Compile `programs` of `config` for `topology`; return the per-chip report (raises if it does not fit).

    devices / hbm_bytes override the topology's (tests). `log` gets progress lines (None: silent).
    """
    from gadjax.parallel.rules import use_mesh

    validate_for_plan(config)
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise PlanError(f"unknown programs {sorted(unknown)}; choose from {PROGRAMS}")
    topo = parse_topology(topology)
    devices = list(devices) if devices is not None else topology_devices(topo)
    hbm = hbm_bytes if hbm_bytes is not None else topo.chip.hbm_bytes
    mesh = make_plan_mesh(config, devices)
    run = build_abstract(config, mesh)
    resident_total = sum(per_chip_bytes(x) for x in (run.g_state, run.d_state, run.ref_params))
    analytic = model_flops_per_step(config, run.model_config)
    report: dict[str, Any] = {
        "topology": topo.name,
        "libtpu_topology": topo.topology_name,
        "device_kind": getattr(devices[0], "device_kind", "?"),
        "num_chips": len(devices),
        "hbm_bytes_per_chip": hbm,
        "mesh": dict(mesh.shape),
        "model": {
            "params": run.model_config.param_count(),
            "layers": run.model_config.num_layers,
            "hidden": run.model_config.hidden_size,
            "vocab": run.model_config.vocab_size,
            "dtype": config.model.dtype,
            "param_dtype": config.model.param_dtype,
            "remat": config.model.remat,
        },
        "batch": {
            "prompts": config.data.batch_size,
            "n_samples": config.rollout.n_samples,
            "prompt_tokens": config.data.max_prompt_tokens,
            "response_tokens": config.rollout.max_new_tokens,
            "micro_batches_g": config.train.micro_batches_g,
            "micro_batches_d": config.train.micro_batches_d,
        },
        "resident_state_bytes_per_chip": resident_total,
        "breakdown_bytes_per_chip": our_breakdown(config, run),
        "largest_arrays": _largest_arrays(run),
        "notes": run.notes,
        "programs": {},
    }
    specs = [s for s in program_specs(config, run) if s.name in programs]
    with use_mesh(mesh):
        for spec in specs:
            t0 = time.perf_counter()
            if log:
                log(f"[plan] compiling {spec.name} ({spec.what}) for {topo.name} ...")
            try:
                compiled = spec.fn.lower(*spec.args).compile()
            except Exception as e:  # XlaRuntimeError / JaxRuntimeError: match on the status text
                msg = str(e)
                if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
                    raise
                nums = parse_oom(msg)
                nice = ", ".join(f"{k.replace('_bytes', '')} {v / GiB:.2f} GiB" for k, v in nums.items())
                first = next((ln for ln in msg.splitlines() if "memory" in ln.lower()), msg[:300])
                raise PlanDoesNotFitError(
                    f"{spec.name} does not fit on {topo.name} ({len(devices)} chips x {hbm / GiB:.0f} GiB "
                    f"HBM, mesh {dict(mesh.shape)}): XLA says RESOURCE_EXHAUSTED ({nice or first.strip()}). "
                    f"Program: {spec.what}. Long-lived state needs {resident_total / GiB:.2f} GiB per chip "
                    f"on top. {advice(config, spec.name, len(devices))}."
                ) from e
            seconds = time.perf_counter() - t0
            mem = _memory(compiled)
            other = resident_total - per_chip_bytes(spec.resident_args)
            total = mem["peak"] + other
            flops = _flops(compiled)
            report["programs"][spec.name] = {
                "what": spec.what,
                "compile_seconds": round(seconds, 1),
                "memory": mem,
                "other_resident_bytes": other,
                "total_bytes": total,
                "headroom_bytes": hbm - total,
                "xla_flops_per_chip": flops,
                "model_flops_all_chips": analytic[spec.name],
            }
            if log:
                log(f"[plan] {spec.name}: {total / GiB:.2f} of {hbm / GiB:.0f} GiB/chip ({seconds:.0f} s)")
            if total > hbm:
                raise PlanDoesNotFitError(
                    f"{spec.name} does not fit on {topo.name} ({len(devices)} chips x {hbm / GiB:.0f} GiB "
                    f"HBM, mesh {dict(mesh.shape)}): the program itself needs {mem['peak'] / GiB:.2f} GiB "
                    f"per chip (arguments {mem['argument'] / GiB:.2f}, outputs {mem['output'] / GiB:.2f}, "
                    f"aliased {mem['alias'] / GiB:.2f}, temporaries {mem['temp'] / GiB:.2f}) and the "
                    f"long-lived state it does not take (the other models and optimizer states) "
                    f"{other / GiB:.2f} GiB: "
                    f"{total / GiB:.2f} GiB > {hbm / GiB:.2f} GiB. Program: {spec.what}. "
                    f"{advice(config, spec.name, len(devices))}."
                )
    peak = max((p["total_bytes"] for p in report["programs"].values()), default=resident_total)
    report["peak_bytes_per_chip"] = peak
    report["headroom_fraction"] = (hbm - peak) / hbm
    return report


# --- printing --------------------------------------------------------------------------------------


def _g(x: float) -> str:
    return f"{x / GiB:8.2f}"


def format_report(rep: dict[str, Any]) -> str:
    """A readable per-chip table (GiB per chip unless marked)."""
    hbm = rep["hbm_bytes_per_chip"]
    m = rep["model"]
    lines = [
        f"gadjax compile-only plan: {rep['topology']} ({rep['libtpu_topology']}, {rep['num_chips']} x "
        f"{rep['device_kind']}, {hbm / GiB:.0f} GiB HBM per chip), mesh {rep['mesh']}",
        f"model {m['params'] / 1e9:.2f} B params, {m['layers']} layers, compute {m['dtype']}, params "
        f"{m['param_dtype']}, remat {m['remat']}; batch {rep['batch']}",
        "",
        "per chip, GiB        argument   output    alias     temp     code |  program  +others =    total"
        "  headroom  compile_s  XLA TFLOP/chip  model TFLOP/chip",
    ]
    for name, p in rep["programs"].items():
        mm = p["memory"]
        xf = p["xla_flops_per_chip"]
        mf = p["model_flops_all_chips"] / rep["num_chips"]
        lines.append(
            f"{name:<18}{_g(mm['argument'])} {_g(mm['output'])} {_g(mm['alias'])} {_g(mm['temp'])} "
            f"{_g(mm['generated_code'])} | {_g(mm['peak'])} {_g(p['other_resident_bytes'])} "
            f"{_g(p['total_bytes'])} {_g(p['headroom_bytes'])} {p['compile_seconds']:10.1f} "
            f"{(xf or 0) / 1e12:15.2f} {mf / 1e12:17.2f}"
        )
    lines += [
        "  (program = XLA's argument + output - alias + temp + code; +others = long-lived state the program",
        "  does not take; XLA TFLOP/chip = cost_analysis of the per-chip program: it counts each loop body",
        "  (layer scan, micro-batch scan, decode loop) ONCE; model TFLOP/chip = analytic step FLOPs / chips)",
    ]
    lines += ["", "our breakdown, GiB per chip:"]
    for k, v in rep["breakdown_bytes_per_chip"].items():
        lines.append(f"  {k:<22}{_g(v)}")
    lines.append(f"  {'long-lived state':<22}{_g(rep['resident_state_bytes_per_chip'])}  (G, D, reference)")
    lines += ["", "largest arrays (global shape, sharding spec, GiB per chip):"]
    for a in rep["largest_arrays"]:
        lines.append(
            f"  {a['name']:<40} {str(a['shape']):<22} {a['dtype']:<9} {a['spec']:<40} "
            f"{_g(a['per_chip_bytes'])}"
        )
    for note in rep.get("notes", []):
        lines.append(f"\nNOTE: {note}")
    if "peak_bytes_per_chip" in rep:
        lines.append(
            f"\npeak {rep['peak_bytes_per_chip'] / GiB:.2f} GiB of {hbm / GiB:.0f} GiB per chip: "
            f"FITS with {100 * rep['headroom_fraction']:.0f}% headroom"
        )
    return "\n".join(lines)


def main(
    config: ConfigDict, topology: str | None = None, programs: Sequence[str] = PROGRAMS
) -> dict[str, Any]:
    """Entry for `gadjax.train --compile_only`: run the plan, print the table and one JSON line."""
    topology = topology or config.get("plan", {}).get("topology", "") or "v5p-8"
    log = lambda s: print(s, file=sys.stderr, flush=True)
    rep = run_plan(config, topology, programs, log=log)
    print(format_report(rep))
    print(json.dumps({"plan": rep}, default=str))
    return rep


def _cli(argv: list[str]) -> None:
    from absl import flags

    t = flags.FLAGS
    rep_programs = [p.strip() for p in t.programs.split(",") if p.strip()]
    try:
        main(t.config, t.topology or None, rep_programs)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from gadjax.cli import quiet_tpu_start

    quiet_tpu_start()  # no libtpu start-up noise on a host without a TPU (describing one needs none)

    config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=False)
    flags.DEFINE_string(
        "topology",
        "",
        "TPU slice, e.g. v5p-64, v4-8, v5e-16, v6e-8 or v5:2x4x4 (default: config.plan.topology, else v5p-8)",
    )
    flags.DEFINE_string("programs", ",".join(PROGRAMS), f"comma-separated subset of {PROGRAMS}")
    flags.mark_flags_as_required(["config"])
    app.run(_cli)
