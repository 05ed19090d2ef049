"""Multi-host (multi-controller) initialisation on JAX's own runtime: `jax.distributed`.

Every host of a TPU pod slice (or every process of a multi-GPU / multi-node CPU job) runs the same
program. `initialize_distributed` connects them before any JAX computation, after which
`jax.devices()` lists the devices of *all* processes, a `Mesh` spans them, and jitted programs run
as one SPMD program with XLA collectives across hosts (ICI/DCN on TPU, NCCL on GPU, gloo on CPU).

Where the process layout comes from, in order:
  1. explicit arguments;
  2. environment variables GADJAX_COORDINATOR ("host:port" of process 0), GADJAX_NUM_PROCESSES,
     GADJAX_PROCESS_ID and optionally GADJAX_LOCAL_DEVICE_IDS ("0,1,2,3");
  3. JAX's cluster auto-detection (Cloud TPU VMs and pod slices, GKE, Slurm, Open MPI) when
     nothing is given and such an environment is present;
  4. otherwise a single process: nothing is initialised.
GADJAX_NUM_PROCESSES=1 forces a single process even where a cluster environment is detected.

Only process 0 writes metrics, reports and exports (`is_primary`); every process takes part in
collectives and in Orbax save / restore.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from gadjax.parallel.cpu_flags import with_cpu_devices

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "GADJAX_COORDINATOR"
ENV_NUM_PROCESSES = "GADJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GADJAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "GADJAX_LOCAL_DEVICE_IDS"


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """The process layout after initialisation."""

    process_id: int
    num_processes: int
    local_device_count: int
    global_device_count: int
    coordinator_address: str | None
    # How the layout was obtained: "single" (nothing initialised), "explicit" (args / env vars),
    # "auto" (JAX cluster auto-detection) or "already" (jax.distributed was initialised before).
    mode: str

    @property
    def is_primary(self) -> bool:
        return self.process_id == 0


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _env_device_ids(name: str) -> list[int] | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} must be a comma-separated list of integers"
        ) from None


def _cluster_env_present() -> str | None:
    """Name of the cluster environment JAX would auto-detect, or None.

    Uses JAX's own detectors (the same ones `jax.distributed.initialize()` runs), so that calling
    with no arguments on a laptop is a single-process no-op instead of an error. The detectors are a
    private JAX module; if it moves, we fall back to the environment variables a TPU VM / Slurm /
    Open MPI sets.
    """
    try:
        from jax._src import clusters  # noqa: F401  (import registers the detectors)
        from jax._src.clusters import ClusterEnv

        for env in ClusterEnv._cluster_types:
            if getattr(env, "opt_in_only_method", False):
                continue
            try:
                if env.is_env_present():
                    return env.__name__
            except Exception:  # a detector that cannot probe (no metadata server) means "not here"
                continue
        return None
    except ImportError:
        for var in (
            "TPU_WORKER_HOSTNAMES",
            "MEGASCALE_COORDINATOR_ADDRESS",
            "SLURM_JOB_ID",
            "OMPI_COMM_WORLD_SIZE",
        ):
            if os.environ.get(var):
                return var
        return None


def _info(mode: str, coordinator_address: str | None) -> DistributedInfo:
    return DistributedInfo(
        process_id=jax.process_index(),
        num_processes=jax.process_count(),
        local_device_count=jax.local_device_count(),
        global_device_count=jax.device_count(),
        coordinator_address=coordinator_address,
        mode=mode,
    )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    initialization_timeout_s: int = 300,
) -> DistributedInfo:
    """Connect this process to the others with `jax.distributed.initialize`; call before any JAX work.

    Arguments left as None are read from GADJAX_COORDINATOR / GADJAX_NUM_PROCESSES /
    GADJAX_PROCESS_ID / GADJAX_LOCAL_DEVICE_IDS. If still nothing is set, JAX's auto-detection is
    used when a cluster environment (Cloud TPU VM, GKE, Slurm, Open MPI) is present, and otherwise
    this is a single-process no-op. `num_processes == 1` is always a no-op. Calling it again after a
    successful initialisation returns the current layout.

    Raises ValueError for an inconsistent layout (a partial explicit layout, a process id outside
    [0, num_processes)), naming the argument or environment variable.
    """
    if jax.distributed.is_initialized():
        return _info("already", coordinator_address or os.environ.get(ENV_COORDINATOR))

    src = {"coordinator_address": "argument", "num_processes": "argument", "process_id": "argument"}
    if coordinator_address is None and os.environ.get(ENV_COORDINATOR, "").strip():
        coordinator_address = os.environ[ENV_COORDINATOR].strip()
        src["coordinator_address"] = ENV_COORDINATOR
    if num_processes is None and (v := _env_int(ENV_NUM_PROCESSES)) is not None:
        num_processes, src["num_processes"] = v, ENV_NUM_PROCESSES
    if process_id is None and (v := _env_int(ENV_PROCESS_ID)) is not None:
        process_id, src["process_id"] = v, ENV_PROCESS_ID
    if local_device_ids is None:
        local_device_ids = _env_device_ids(ENV_LOCAL_DEVICE_IDS)

    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes ({src['num_processes']}) must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id ({src['process_id']}) = {process_id} is outside [0, {num_processes}) "
            f"(num_processes from {src['num_processes']})"
        )

    if num_processes == 1:
        if process_id not in (None, 0):
            raise ValueError(f"process_id ({src['process_id']}) must be 0 for a single process")
        logger.info("single process: jax.distributed not initialised")
        return _info("single", None)

    explicit = [coordinator_address, num_processes, process_id]
    if all(x is None for x in explicit):
        cluster = _cluster_env_present()
        if cluster is None:
            # debug: a plain single-process start says nothing (a config error after it stays one line)
            logger.debug("no coordinator given and no cluster environment detected: single process")
            return _info("single", None)
        logger.info("initialising jax.distributed from the %s environment", cluster)
        jax.distributed.initialize(
            local_device_ids=local_device_ids, initialization_timeout=initialization_timeout_s
        )
        return _info("auto", None)

    if any(x is None for x in explicit):
        missing = [
            f"{name} (or {env})"
            for name, val, env in (
                ("coordinator_address", coordinator_address, ENV_COORDINATOR),
                ("num_processes", num_processes, ENV_NUM_PROCESSES),
                ("process_id", process_id, ENV_PROCESS_ID),
            )
            if val is None
        ]
        # A partial layout may still be completed by a cluster environment (e.g. only the
        # coordinator port is custom on Slurm); elsewhere it is a mistake we name.
        if _cluster_env_present() is None:
            raise ValueError(
                "incomplete multi-process layout: missing "
                + ", ".join(missing)
                + "; give all of coordinator, process count and process id, or none of them"
            )
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ValueError(
            f"coordinator_address ({src['coordinator_address']}) = {coordinator_address!r} "
            "must be 'host:port'"
        )

    _ensure_cpu_collectives()
    logger.info(
        "initialising jax.distributed: coordinator=%s num_processes=%s process_id=%s",
        coordinator_address,
        num_processes,
        process_id,
    )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout_s,
    )
    return _info("explicit", coordinator_address)


def _ensure_cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend need an implementation (gloo); JAX 0.10 defaults
    to it, older versions to none, in which case a multi-process CPU psum fails at run time."""
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # option removed in a future JAX: its default then works
        pass


def is_primary() -> bool:
    """True on process 0, the only one that writes metrics, reports and exports."""
    return jax.process_index() == 0


def sync_global_devices(name: str) -> None:
    """Barrier: every process blocks until all processes reach the barrier with the same `name`.

    A no-op for a single process. Use it around host-side work one process does for all (process 0
    writing a file that the others then read).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def wait_for_all_processes(name: str, timeout_s: float = 900.0) -> None:
    """Barrier through the coordination service (no device collective): every process blocks here until
    all arrive, for up to ``timeout_s``. A no-op for a single process.

    Hosts reach their first collective at different times (model loading and compiling run at each
    host's own pace); on CPU, gloo gives a new communicator only 30 s to form, which a loaded host can
    miss. Lining the hosts up here first makes that wait ours, with our timeout."""
    if jax.process_count() == 1:
        return
    import orbax.checkpoint as ocp

    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def per_process(value: int | bool | Sequence[int]) -> np.ndarray:
    """Every process's scalar ``value``, in process order, on every process (one allgather; every process
    must call it at the same point): shape [processes]; a sequence of k ints gives [processes, k]. One
    process: ``[value]`` without a collective."""
    width = None if np.ndim(value) == 0 else len(value)
    mine = np.asarray([value])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mine = np.asarray(multihost_utils.process_allgather(mine))
    return mine.reshape(-1) if width is None else mine.reshape(-1, width)


def host_array(x: Any) -> np.ndarray:
    """A (possibly multi-host) jax.Array as a full numpy array on every process (a numpy array as is)."""
    if isinstance(x, np.ndarray):
        return x
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def allgather_json(obj: object) -> list:
    """Every process's JSON-serialisable `obj`, in process order, on every process.

    Used for per-host state that must reach a checkpoint written by process 0 (e.g. each host's data
    iterator position). One process: `[obj]`.
    """
    import json

    import numpy as np

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(rows, sizes, strict=True)]


def process_batch_slice(global_batch_size: int) -> slice:
    """Rows [start, stop) of a global batch that this process loads and feeds.

    Each host loads its own shard of prompts (and asks the teacher for its own prompts only); the
    per-host arrays are stitched into one global array with `jax.make_array_from_process_local_data`.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the process count {n}")
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


@dataclasses.dataclass(frozen=True)
class LocalProcessResult:
    process_id: int
    returncode: int | None  # None: killed after the timeout
    output: str  # stdout and stderr together


def run_local_processes(
    argv: Sequence[str],
    num_processes: int,
    devices_per_process: int,
    *,
    timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> list[LocalProcessResult]:
    """Run `python argv...` as `num_processes` JAX processes on this machine, each with
    `devices_per_process` CPU devices, connected through a coordinator on a free localhost port.

    This is the CPU stand-in for a multi-host slice (tests, trying a multi-host config on a laptop):
    the children call `initialize_distributed()` with no arguments and find their layout in the
    GADJAX_* variables set here. If any process is still running after `timeout_s`, all are killed
    (returncode None), so a hung collective fails instead of hanging the caller.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError("num_processes and devices_per_process must be >= 1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = dict(os.environ if env is None else env)
    # Replace any device-count flag (tests set 8 for the parent process).
    base["XLA_FLAGS"] = with_cpu_devices(base.get("XLA_FLAGS", ""), devices_per_process)
    base["JAX_PLATFORMS"] = "cpu"
    base[ENV_COORDINATOR] = f"127.0.0.1:{port}"
    base[ENV_NUM_PROCESSES] = str(num_processes)
    procs = []
    for pid in range(num_processes):
        child_env = {**base, ENV_PROCESS_ID: str(pid)}
        out = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would block the child
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, *argv], env=child_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
                ),
                out,
            )
        )
    results = []
    deadline = time.monotonic() + timeout_s
    try:
        for p, _ in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break  # the rest get the same verdict below
    finally:
        for pid, (p, out) in enumerate(procs):
            hung = p.poll() is None
            if hung:
                p.kill()
                p.wait()
            out.seek(0)
            results.append(LocalProcessResult(pid, None if hung else p.returncode, out.read()))
            out.close()
    return results
