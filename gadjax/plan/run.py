"""Run the plan: compile each program for the topology and check it fits with the long-lived state."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from jax.sharding import Mesh
from ml_collections import ConfigDict

from gadjax.plan.analysis import _largest_arrays, _memory, model_flops_per_step, our_breakdown, rollout_slots
from gadjax.plan.errors import PlanDoesNotFitError, PlanError
from gadjax.plan.oom import advice, parse_oom
from gadjax.plan.programs import PROGRAMS, program_specs
from gadjax.plan.roofline import (
    floor_bytes,
    program_bound,
    rollout_decode_steps,
    step_prediction,
    xla_cost,
)
from gadjax.plan.state import build_abstract, per_chip_bytes, trainable_bytes
from gadjax.plan.topology import ChipSpec, GiB, parse_topology, topology_devices


def validate_for_plan(config: ConfigDict) -> None:
    """The trainer's config checks without those that need files on this machine (model, data, init_from)."""
    from gadjax.trainer.validation import validate

    c = ConfigDict(config.to_dict())
    c.model.path, c.model.random_init.enabled = "", True
    c.data.train = [__file__]
    c.init_from = ""
    c.allow_gad_from_scratch = True
    c.stage = c.stage or "gad"  # the plan compiles a gad step's programs; recipe configs leave stage unset
    validate(c)


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
    profile: str = "paper",
    chip: ChipSpec | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Compile `programs` of `config` for `topology`; return the per-chip report (raises if it does not fit).

    devices / hbm_bytes override the topology's (tests). `chip` replaces the topology's chip in the
    roofline (gadjax.plan.gpu: a GPU's peak and bandwidth) and `label` its name in messages.
    `log` gets progress lines (None: silent).
    `profile` (gadjax.data.lengths) is the length mix of the real-token counts (report["lengths"]) and,
    with train.packing, of the packed programs' FLOPs (the micro-batches a step really runs).
    """
    from gadjax.data.lengths import get_profile
    from gadjax.parallel.rules import use_mesh
    from gadjax.plan.lengths import program_tokens
    from gadjax.plan.packed import packed_model_flops

    validate_for_plan(config)
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise PlanError(f"unknown programs {sorted(unknown)}; choose from {PROGRAMS}")
    topo = parse_topology(topology)
    chip = chip or topo.chip
    where = label or topo.name
    devices = list(devices) if devices is not None else topology_devices(topo)
    hbm = hbm_bytes if hbm_bytes is not None else chip.hbm_bytes
    mesh = make_plan_mesh(config, devices)
    run = build_abstract(config, mesh)
    resident_total = sum(per_chip_bytes(x) for x in run.resident())
    analytic = model_flops_per_step(config, run.model_config)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    lengths = program_tokens(config, get_profile(profile), steps=4, shards=shards)
    if config.train.packing:
        analytic.update(packed_model_flops(config, run.model_config, lengths))
    breakdown = our_breakdown(config, run)
    levels = rollout_slots(config, mesh) if config.rollout.batching == "continuous" else ()
    floors = floor_bytes(config, breakdown, levels)
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
            "attention": config.model.attention,
        },
        "batch": {
            "prompts": config.data.batch_size,
            "n_samples": config.rollout.n_samples,
            "prompt_tokens": config.data.max_prompt_tokens,
            "response_tokens": config.rollout.max_new_tokens,
            "micro_batches_g": config.train.micro_batches_g,
            "micro_batches_d": config.train.micro_batches_d,
        },
        # The rollout under the paper's length profile (gadjax.plan.roofline.rollout_decode_steps).
        "rollout": {
            "batching": config.rollout.batching,
            "micro_batches": config.rollout.micro_batches,
            "slots": levels[0] if levels else None,
            "tail_slots": list(levels[1:]) if levels else None,
            "decode_steps_under_length_profile": rollout_decode_steps(config, levels),
        },
        "resident_state_bytes_per_chip": resident_total,
        "trainable_bytes_per_chip": trainable_bytes(run),
        "breakdown_bytes_per_chip": breakdown,
        "largest_arrays": _largest_arrays(run),
        "notes": run.notes,
        "lora": {"g": config.model.lora.rank, "d": config.disc.lora.rank},
        "lengths": {"profile": profile, "packing": bool(config.train.packing), "programs": lengths},
        "programs": {},
    }
    if config.model.lora.rank or config.disc.lora.rank:  # what full fine-tuning would hold (shapes only)
        full = ConfigDict(config.to_dict())
        full.model.lora.rank = full.disc.lora.rank = 0
        full.model.base_dtype = ""
        report["full_finetune_trainable_bytes_per_chip"] = trainable_bytes(build_abstract(full, mesh))
    specs = [s for s in program_specs(config, run) if s.name in programs]
    with use_mesh(mesh):
        for spec in specs:
            t0 = time.perf_counter()
            if log:
                log(f"[plan] compiling {spec.name} ({spec.what}) for {where} ...")
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
                    f"{spec.name} does not fit on {where} ({len(devices)} chips x {hbm / GiB:.0f} GiB "
                    f"HBM, mesh {dict(mesh.shape)}): XLA says RESOURCE_EXHAUSTED ({nice or first.strip()}). "
                    f"Program: {spec.what}. Long-lived state needs {resident_total / GiB:.2f} GiB per chip "
                    f"on top. {advice(config, spec.name, len(devices))}."
                ) from e
            seconds = time.perf_counter() - t0
            mem = _memory(compiled)
            other = resident_total - per_chip_bytes(spec.resident_args)
            total = mem["peak"] + other
            flops, nbytes = xla_cost(compiled)
            report["programs"][spec.name] = {
                "what": spec.what,
                "compile_seconds": round(seconds, 1),
                "memory": mem,
                "other_resident_bytes": other,
                "total_bytes": total,
                "headroom_bytes": hbm - total,
                "xla_flops_per_chip": flops,
                "model_flops_all_chips": analytic[spec.name],
                "xla_bytes_accessed_per_chip": nbytes,
                "roofline": program_bound(
                    flops, nbytes, analytic[spec.name] / len(devices), floors[spec.name], chip
                ),
            }
            if log:
                log(f"[plan] {spec.name}: {total / GiB:.2f} of {hbm / GiB:.0f} GiB/chip ({seconds:.0f} s)")
            if total > hbm:
                raise PlanDoesNotFitError(
                    f"{spec.name} does not fit on {where} ({len(devices)} chips x {hbm / GiB:.0f} GiB "
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
    rooflines = {name: p["roofline"] for name, p in report["programs"].items()}
    total_flops = sum(p["model_flops_all_chips"] for p in report["programs"].values())
    report["predicted_step"] = step_prediction(rooflines, total_flops, len(devices), chip)
    report["headroom_fraction"] = (hbm - peak) / hbm
    return report
