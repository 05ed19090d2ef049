"""Will this config fit a GPU box? The compile-only plan for N NVIDIA GPUs, answered without a GPU.

    python -m gadjax.plan --config configs/gpu.py --topology 8xh100     # also 8xh200, 8xa100, 4xh100, ...

No GPU compiler runs without a GPU, so the step's programs are compiled by XLA for TPU v5p chips in the
same number and the same mesh (v5p-2N: N chips, one JAX device each, like N GPUs), from the same
abstract, sharded state. Each program's peak (XLA's arguments + outputs - aliased + temporaries + code)
plus the long-lived state it does not take is then checked against the GPU's usable memory: its HBM
times the fraction JAX's GPU allocator may use (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set). The
roofline uses the GPU's peak and bandwidth.

How far to trust it:
- exact (shapes x shardings, backend-independent): the long-lived state (G, D, Adam moments, the
  reference), the rollout's KV cache (the "our breakdown" lines), the gradient accumulators;
- estimated: the temporaries. They come from XLA:TPU's scheduling of the same sharded program with the
  splash attention kernel; on the GPU, XLA:GPU schedules and fuses differently and `model.attention=auto`
  runs cuDNN's fused attention, which (like splash) holds no [heads, T, T] scores. Not counted at all:
  the CUDA context and cuBLAS / cuDNN workspaces (outside JAX's pool: ~1 GiB per GPU), NCCL buffers,
  and the allocator's fragmentation. Keep >= 10% headroom; the first real steps are the measurement
  (`nvidia-smi` or jax's `device.memory_stats()["peak_bytes_in_use"]`).
Never checked against a GPU run here (no GPU was available when this was written).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from gadjax.plan.errors import PlanError
from gadjax.plan.topology import CHIPS, ChipSpec, GiB

MiB = 1 << 20
DEFAULT_MEM_FRACTION = 0.75  # jax's default XLA_PYTHON_CLIENT_MEM_FRACTION on GPUs


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int  # total device memory as nvidia-smi reports it
    peak_bf16_flops: float  # dense
    hbm_bytes_per_s: float


# Memory: nvidia-smi's "total" of each card (H100 SXM 80GB: 81559 MiB; H200: 143771 MiB; A100 SXM 80GB:
# 81920 MiB). Peak dense bf16 and bandwidth from NVIDIA's data sheets (H100 SXM: 989 TFLOP/s, 3.35 TB/s;
# H200 SXM: 989 TFLOP/s, 4.8 TB/s; A100 SXM 80GB: 312 TFLOP/s, 2.039 TB/s).
GPUS = {
    "h100": GpuSpec("H100 80GB (SXM)", 81559 * MiB, 989e12, 3.35e12),
    "h200": GpuSpec("H200 141GB (SXM)", 143771 * MiB, 989e12, 4.8e12),
    "a100": GpuSpec("A100 80GB (SXM)", 81920 * MiB, 312e12, 2.039e12),
}
_BOX = re.compile(r"(\d+)x(h100|h200|a100)", re.I)


@dataclasses.dataclass(frozen=True)
class GpuBox:
    name: str  # as written, e.g. 8xh100
    count: int
    gpu: GpuSpec
    mem_fraction: float

    @property
    def usable_bytes(self) -> int:
        return int(self.gpu.memory_bytes * self.mem_fraction)

    @property
    def proxy_topology(self) -> str:
        return f"v5p-{2 * self.count}"  # v5p-N counts TensorCores: N / 2 chips

    def chip(self) -> ChipSpec:
        """A ChipSpec with the GPU's memory and speeds (the roofline and the fit use it)."""
        return dataclasses.replace(
            CHIPS["v5p"],
            generation=self.name,
            hbm_bytes=self.usable_bytes,
            peak_bf16_flops=self.gpu.peak_bf16_flops,
            hbm_bytes_per_s=self.gpu.hbm_bytes_per_s,
        )


def is_gpu_box(name: str) -> bool:
    return bool(_BOX.fullmatch(name.strip()))


def mem_fraction_from_env(environ: Any = os.environ) -> float:
    """XLA_PYTHON_CLIENT_MEM_FRACTION as JAX reads it (default 0.75); a bad value is a PlanError."""
    raw = environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
    if not raw:
        return DEFAULT_MEM_FRACTION
    try:
        value = float(raw)
    except ValueError:
        raise PlanError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw!r} is not a number") from None
    if not 0 < value <= 1:
        raise PlanError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw!r} must be in (0, 1]")
    return value


def parse_gpu_box(name: str, mem_fraction: float | None = None) -> GpuBox:
    """'8xh100' -> GpuBox (GPU count x kind); the count must be one the v5p proxy has (4, 8, 16, ...)."""
    from gadjax.plan.topology import parse_topology

    m = _BOX.fullmatch(name.strip())
    if not m:
        raise PlanError(f"GPU box {name!r}: expected COUNTxKIND, KIND one of {sorted(GPUS)} (e.g. 8xh100)")
    box = GpuBox(
        name.strip().lower(),
        int(m.group(1)),
        GPUS[m.group(2).lower()],
        mem_fraction_from_env() if mem_fraction is None else mem_fraction,
    )
    try:
        parse_topology(box.proxy_topology)
    except PlanError:
        raise PlanError(
            f"GPU box {name!r}: the plan compiles for as many TPU chips as GPUs and knows 4, 8, 16, 32, "
            f"64 ... chips, not {box.count} (estimate the next count up and scale)"
        ) from None
    return box


def run_gpu_plan(
    config: Any,
    box: str | GpuBox,
    programs: Sequence[str] | None = None,
    *,
    log: Callable[[str], None] | None = print,
    profile: str = "paper",
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Compile `programs` for the box's proxy (see the module doc) and check them against the GPU memory.

    The report is run_plan's, with `topology` the box and a `gpu` entry (kind, count, memory, the
    fraction, usable bytes, the proxy compiler). Raises PlanDoesNotFitError naming the program and bytes.
    """
    from gadjax.plan.programs import PROGRAMS
    from gadjax.plan.run import run_plan

    b = box if isinstance(box, GpuBox) else parse_gpu_box(box)
    rep = run_plan(
        config,
        b.proxy_topology,
        PROGRAMS if programs is None else programs,
        devices=devices,
        hbm_bytes=b.usable_bytes,
        log=log,
        profile=profile,
        chip=b.chip(),
        label=f"{b.name} (usable {b.usable_bytes / GiB:.1f} GiB per GPU at "
        f"XLA_PYTHON_CLIENT_MEM_FRACTION={b.mem_fraction:g})",
    )
    rep["gpu"] = {
        "kind": b.gpu.name,
        "count": b.count,
        "memory_bytes": b.gpu.memory_bytes,
        "mem_fraction": b.mem_fraction,
        "usable_bytes": b.usable_bytes,
        "proxy": f"XLA:TPU compile for {b.proxy_topology} ({b.count} chips), same mesh and shardings",
    }
    rep["topology"] = b.name
    return rep


def format_gpu_header(rep: dict[str, Any]) -> str:
    """Lines that say what the GPU numbers are (printed above the plan's table)."""
    g = rep["gpu"]
    return (
        f"GPU box {rep['topology']}: {g['count']} x {g['kind']}, {g['memory_bytes'] / GiB:.1f} GiB each, "
        f"JAX may use {g['mem_fraction']:g} of it = {g['usable_bytes'] / GiB:.1f} GiB "
        f"(XLA_PYTHON_CLIENT_MEM_FRACTION)\n"
        f"estimate: long-lived state and KV cache exact; temporaries from the {g['proxy']}; CUDA context, "
        f"cuDNN / NCCL workspaces not counted: keep >= 10% headroom (gadjax/plan/gpu.py)"
    )
