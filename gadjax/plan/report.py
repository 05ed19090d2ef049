"""The plan's report as a readable per-chip table."""

from __future__ import annotations

from typing import Any

from gadjax.plan.topology import GiB


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
    lines += _roofline_lines(rep)
    if "lengths" in rep:  # real tokens per program under the length profile (gadjax.plan.lengths)
        from gadjax.plan.lengths import format_table

        ln = rep["lengths"]
        packed = "packed (train.packing=true)" if ln["packing"] else "padded (train.packing=false)"
        lines += [
            "",
            f"tokens per step under the {ln['profile']!r} length profile; this config runs {packed}:",
        ]
        lines.append(format_table(ln["programs"]))
    lines += ["", "our breakdown, GiB per chip:"]
    for k, v in rep["breakdown_bytes_per_chip"].items():
        lines.append(f"  {k:<22}{_g(v)}")
    lines.append(f"  {'long-lived state':<22}{_g(rep['resident_state_bytes_per_chip'])}  (G, D, reference)")
    t, full = rep["trainable_bytes_per_chip"], rep.get("full_finetune_trainable_bytes_per_chip")
    for tag in ("g", "d"):
        both = t[f"{tag}_params"] + t[f"{tag}_opt_state"]
        line = f"  {tag.upper() + ' trainable + opt':<22}{_g(both)}"
        if full:
            line += f"  (full fine-tuning: {_g(full[f'{tag}_params'] + full[f'{tag}_opt_state']).strip()})"
        lines.append(line + ("" if not rep.get("lora", {}).get(tag) else f"  LoRA rank {rep['lora'][tag]}"))
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


def _roofline_lines(rep: dict[str, Any]) -> list[str]:
    """The roofline table (gadjax.plan.roofline): per program lower bounds, the predicted step and MFU."""
    progs = {name: p["roofline"] for name, p in rep["programs"].items() if "roofline" in p}
    if not progs:
        return []
    lines = [
        "",
        "roofline per chip (lower bounds: max(FLOPs / peak bf16, bytes / HBM bandwidth); plan/roofline.py):",
        f"{'program':<18}{'TFLOP':>9}{'GB':>10}{'FLOP/B':>9}{'compute_ms':>12}{'memory_ms':>11}"
        f"{'bound_ms':>10}  limit",
    ]
    for name, r in progs.items():
        lines.append(
            f"{name:<18}{r['flops'] / 1e12:9.3f}{r['bytes'] / 1e9:10.3f}{r['intensity']:9.1f}"
            f"{1e3 * r['compute_s']:12.3f}{1e3 * r['memory_s']:11.3f}{1e3 * r['bound_s']:10.3f}  {r['limit']}"
        )
    step = rep.get("predicted_step")
    if step:
        mfu = f"{100 * step['mfu']:.1f}%" if step["mfu"] is not None else "?"
        lines.append(f"predicted step >= {step['step_s']:.4f} s; implied MFU <= {mfu}")
    return lines
