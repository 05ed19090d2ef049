"""Device mesh construction over (data, fsdp, tensor)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from gadjax.parallel.rules import MESH_AXES


class MeshDoesNotFitError(ValueError):
    """A mesh shape that the devices found cannot fill; the message names the shape, the device count and
    the fix (the trainer reports it as ``config.mesh.shape: ...``, exit status 2)."""

    def __init__(self, shape: Sequence[int], n_devices: int, fix: str = "--config.mesh.shape='(1,-1,1)'"):
        shape = tuple(shape)
        known = int(np.prod([s for s in shape if s != -1]))
        need = f"a multiple of {known}" if -1 in shape else str(known)
        self.shape, self.n_devices = shape, n_devices
        super().__init__(
            f"{_spell(shape)} needs {need} devices, found {n_devices}; set {fix} to use every device found"
        )


def _spell(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def make_mesh(
    shape: Sequence[int], devices: Sequence[jax.Device] | None = None, fix: str | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh. One entry of `shape` may be -1: it takes the remaining devices.

    Axes are Auto (GSPMD-style) so model code can use with_sharding_constraint (DESIGN.md: jax 0.10's
    make_mesh defaults to Explicit axes). `fix`: the setting a MeshDoesNotFitError tells the user to change.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: entries must be positive (or one -1)")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 not in shape and known < len(devices):
        devices = devices[:known]  # e.g. a (1, 1, 1) mesh on an 8-device host: the first device
    if (len(devices) % known) if -1 in shape else (known != len(devices)):
        raise MeshDoesNotFitError(shape, len(devices), *([fix] if fix else []))
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // known
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU or unusual topologies: plain row-major order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# Serving and evaluation: tensor parallel over every local device (each decode step reads every weight
# once, split across devices; FSDP would gather the weights on every step). Heads that do not divide the
# device count are replicated (rules.fit_spec_to_shape).
INFERENCE_MESH = (1, 1, -1)


def parse_mesh_flag(value: str) -> tuple[int, ...]:
    """``--mesh`` (data,fsdp,tensor, e.g. ``1,1,-1``) as a tuple; ``auto``: INFERENCE_MESH on GPUs / TPUs,
    one device on CPU (several CPU devices exist only as an emulation, which is no faster). ValueError
    names the flag."""
    if value == "auto":
        return INFERENCE_MESH if jax.default_backend() != "cpu" else (1, 1, 1)
    try:
        shape = tuple(int(v) for v in value.replace("(", "").replace(")", "").split(","))
    except ValueError:
        shape = ()
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"--mesh {value!r}: expected 'auto' or three integers data,fsdp,tensor, e.g. 1,1,-1")
    return shape


def local_mesh(shape: Sequence[int] = INFERENCE_MESH) -> Mesh:
    """A mesh over this process's devices (jax.local_devices()) for serving and evaluation."""
    return make_mesh(shape, jax.local_devices(), fix="--mesh 1,1,-1")
