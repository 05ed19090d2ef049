"""Multi-controller JAX on localhost: 2 processes x 4 CPU devices behave like 1 process x 8 devices.

The test spawns this file as a script twice (`--worker`, through `run_local_processes`), each child
with its own XLA_FLAGS (4 host devices, not the 8 of conftest) and GADJAX_* environment variables, so
the children initialise through `initialize_distributed` exactly as hosts of a TPU pod do. Each child
feeds only its half of a global batch (`jax.make_array_from_process_local_data`), runs a jitted
cross-device psum and a sharded matmul over a global ("data"=8) mesh, and writes the (replicated)
results to a file. The parent computes the same programs on its own 8 devices and with numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

ROWS, COLS, OUT = 16, 6, 5
CHILD_TIMEOUT_S = 150


def _global_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    w = rng.standard_normal((COLS, OUT)).astype(np.float32)
    return x, w


def _programs(mesh):
    """The two SPMD programs: a psum over the data axis and a data-sharded matmul + global sum."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    @jax.jit
    def psum_rows(x):
        # Per-device partial column sums, then an explicit cross-device (cross-process) psum.
        f = jax.shard_map(
            lambda xs: jax.lax.psum(jnp.sum(xs, axis=0), "data"),
            mesh=mesh, in_specs=P("data", None), out_specs=P(),
        )
        return f(x)

    @jax.jit
    def matmul(x, w):
        y = jnp.dot(x, w)  # [ROWS, OUT] sharded over data
        y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P("data", None)))
        # Replicate so every process can read the whole result; the sum needs an all-reduce.
        rep = NamedSharding(mesh, P())
        return jax.lax.with_sharding_constraint(y, rep), jax.lax.with_sharding_constraint(jnp.sum(y), rep)

    return psum_rows, matmul


def _run_programs(process_rows: slice) -> dict[str, np.ndarray]:
    """Run both programs on a (data=all devices) mesh; this process contributes rows `process_rows`."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    x, w = _global_inputs()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xg = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data", None)), x[process_rows], (ROWS, COLS)
    )
    wg = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), w, (COLS, OUT))
    psum_rows, matmul = _programs(mesh)
    # Block on each result before the next collective program (2-core CPU deadlock, DESIGN.md).
    colsum = np.asarray(psum_rows(xg))
    y, total = matmul(xg, wg)
    y, total = np.asarray(y), np.asarray(total)
    return {"colsum": colsum, "y": y, "total": total}


def _worker(out_pattern: str) -> None:
    from gadjax.parallel import distributed

    info = distributed.initialize_distributed()
    out_path = out_pattern.format(info.process_id)
    import jax

    assert jax.device_count() == 8, jax.devices()
    assert jax.local_device_count() == 4
    results = _run_programs(distributed.process_batch_slice(ROWS))
    distributed.sync_global_devices("test_distributed_done")
    payload = {k: v.tolist() for k, v in results.items()}
    # Per-host JSON of different sizes (as data iterator states are) reaches every process in order.
    mine = {"pid": info.process_id, "text": "é" * (3 + 5 * info.process_id)}
    payload["gathered"] = distributed.allgather_json(mine)
    payload["info"] = {
        "process_id": info.process_id, "num_processes": info.num_processes,
        "local_device_count": info.local_device_count, "global_device_count": info.global_device_count,
        "mode": info.mode, "is_primary": distributed.is_primary(),
        "device_processes": sorted({d.process_index for d in jax.devices()}),
    }
    Path(out_path).write_text(json.dumps(payload))
    jax.distributed.shutdown()


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    from gadjax.parallel.distributed import run_local_processes

    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    procs = run_local_processes(
        [str(Path(__file__).resolve()), "--worker", str(tmp_path / "proc{}.json")],
        num_processes=2, devices_per_process=4, timeout_s=CHILD_TIMEOUT_S, env=env,
    )
    logs = "\n".join(f"--- process {r.process_id} ---\n{r.output[-3000:]}" for r in procs)
    for r in procs:
        assert r.returncode is not None, f"process {r.process_id} hung for > {CHILD_TIMEOUT_S}s\n{logs}"
        assert r.returncode == 0, f"process {r.process_id} exited {r.returncode}\n{logs}"
    outs = [tmp_path / f"proc{i}.json" for i in range(2)]

    results = [json.loads(o.read_text()) for o in outs]
    expected_gather = [{"pid": 0, "text": "é" * 3}, {"pid": 1, "text": "é" * 8}]
    assert [r["gathered"] for r in results] == [expected_gather, expected_gather]
    for i, r in enumerate(results):
        assert r["info"] == {
            "process_id": i, "num_processes": 2, "local_device_count": 4, "global_device_count": 8,
            "mode": "explicit", "is_primary": i == 0, "device_processes": [0, 1],
        }

    # Reference 1: the same programs in this process on 8 local devices (conftest).
    import jax

    assert jax.device_count() == 8 and jax.process_count() == 1
    single = _run_programs(slice(0, ROWS))
    # Reference 2: numpy.
    x, w = _global_inputs()
    expect = {"colsum": x.sum(0), "y": x @ w, "total": (x @ w).sum()}
    for r in results:
        for k in ("colsum", "y", "total"):
            got = np.asarray(r[k], np.float32)
            # Same programs, same device count: only reduction order in gloo vs in-process may differ.
            np.testing.assert_allclose(got, single[k], rtol=1e-6, atol=1e-5, err_msg=k)
            np.testing.assert_allclose(got, expect[k], rtol=1e-5, atol=1e-4, err_msg=k)


@pytest.mark.slow
def test_hung_processes_are_killed_after_the_timeout():
    from gadjax.parallel.distributed import run_local_processes

    t0 = time.monotonic()
    code = ("import os, time; print(os.environ['GADJAX_PROCESS_ID'], os.environ['XLA_FLAGS'], flush=True); "
            "time.sleep(0 if os.environ['GADJAX_PROCESS_ID'] == '0' else 60)")
    res = run_local_processes(["-c", code], num_processes=2, devices_per_process=3, timeout_s=3)
    assert time.monotonic() - t0 < 30
    assert [r.returncode for r in res] == [0, None]
    assert res[1].output.startswith("1 ") and "--xla_force_host_platform_device_count=3" in res[1].output
    assert "device_count=8" not in res[1].output  # the parent's flag is replaced, not appended to


def test_single_process_is_noop(monkeypatch):
    from gadjax.parallel import distributed

    for var in ("GADJAX_COORDINATOR", "GADJAX_NUM_PROCESSES", "GADJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GADJAX_NUM_PROCESSES", "1")
    info = distributed.initialize_distributed()
    assert info.mode == "single" and info.num_processes == 1 and info.is_primary
    assert distributed.is_primary()
    distributed.sync_global_devices("noop")  # must not block or compile anything
    assert distributed.process_batch_slice(8) == slice(0, 8)


@pytest.mark.parametrize(
    "env, match",
    [
        ({"GADJAX_NUM_PROCESSES": "two"}, "GADJAX_NUM_PROCESSES='two' is not an integer"),
        ({"GADJAX_NUM_PROCESSES": "2", "GADJAX_PROCESS_ID": "2", "GADJAX_COORDINATOR": "h:1"},
         r"GADJAX_PROCESS_ID\) = 2 is outside \[0, 2\)"),
        ({"GADJAX_NUM_PROCESSES": "0"}, "must be >= 1"),
        ({"GADJAX_NUM_PROCESSES": "2", "GADJAX_PROCESS_ID": "1", "GADJAX_COORDINATOR": "hostonly"},
         "must be 'host:port'"),
    ],
)
def test_bad_layout_is_named(monkeypatch, env, match):
    from gadjax.parallel import distributed

    for var in ("GADJAX_COORDINATOR", "GADJAX_NUM_PROCESSES", "GADJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.initialize_distributed()


def test_partial_layout_outside_a_cluster_is_an_error(monkeypatch):
    from gadjax.parallel import distributed

    for var in ("GADJAX_COORDINATOR", "GADJAX_NUM_PROCESSES", "GADJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_cluster_env_present", lambda: None)
    with pytest.raises(ValueError, match=r"missing coordinator_address \(or GADJAX_COORDINATOR\)"):
        distributed.initialize_distributed(num_processes=2, process_id=0)


def test_uneven_batch_split_is_an_error(monkeypatch):
    import jax

    from gadjax.parallel import distributed

    monkeypatch.setattr(jax, "process_count", lambda: 3)
    monkeypatch.setattr(jax, "process_index", lambda: 2)
    assert distributed.process_batch_slice(9) == slice(6, 9)
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        distributed.process_batch_slice(8)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, help="results file pattern, {} = process id")
    _worker(parser.parse_args().worker)
