"""Device mesh construction over (data, fsdp, tensor)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from gadjax.parallel.rules import MESH_AXES


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh. One entry of `shape` may be -1: it takes the remaining devices.

    Axes are Auto (GSPMD-style) so model code can use with_sharding_constraint (DESIGN.md: jax 0.10's
    make_mesh defaults to Explicit axes).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 not in shape and known < len(devices):
        devices = devices[:known]  # e.g. a (1, 1, 1) mesh on an 8-device host: the first device
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} cannot cover {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))} devices, "
            f"found {len(devices)}"
        )
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU or unusual topologies: plain row-major order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
