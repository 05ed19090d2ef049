"""TPU slices: the chip table, slice names (v5p-64 or v5:2x4x4) -> Topology, and libtpu's abstract devices."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from gadjax.plan.errors import PlanError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    generation: str  # v4 | v5p | v5e | v6e
    topology_prefix: str  # libtpu's name: v4 | v5 | v5e | v6e
    chip_config: str  # megacore (one JAX device per chip) | default
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, dense
    cores_per_chip_in_name: int  # v4-N / v5p-N count TensorCores (2 per chip); v5e / v6e count chips
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    hbm_bytes_per_s: float  # per chip HBM bandwidth


# Peak bf16 FLOP/s and HBM bandwidth per chip, from the Cloud TPU system-architecture pages:
# v4 275 TFLOP/s, 1200 GB/s (cloud.google.com/tpu/docs/v4); v5p 459 TFLOP/s, 2765 GB/s
# (cloud.google.com/tpu/docs/v5p); v5e 197 TFLOP/s, 819 GB/s (cloud.google.com/tpu/docs/v5e);
# v6e (Trillium) 918 TFLOP/s, 1640 GB/s (cloud.google.com/tpu/docs/v6e).
CHIPS = {
    "v4": ChipSpec("v4", "v4", "megacore", 32 * GiB, 275e12, 2, 3, 1200e9),
    "v5p": ChipSpec("v5p", "v5", "megacore", 95 * GiB, 459e12, 2, 3, 2765e9),
    "v5e": ChipSpec("v5e", "v5e", "default", 16 * GiB, 197e12, 1, 2, 819e9),
    "v6e": ChipSpec("v6e", "v6e", "default", 32 * GiB, 918e12, 1, 2, 1640e9),
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
