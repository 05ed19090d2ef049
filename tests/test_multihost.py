"""The trainer on several JAX processes: 2 processes x 4 CPU devices == 1 process x 8 devices (issue 8).

Both runs are the real CLI (`python -m gadjax.train --config configs/tiny.py ...`, stage gad, 3 steps,
mesh (2, 2, 2), seed 0) started through `run_local_processes`, so the 2-process run initialises
`jax.distributed` from the GADJAX_* variables and talks over JAX's CPU collectives (gloo) exactly as
the hosts of a slice do. `data.process_sharding=replicate` makes every process build the same global
batch the single process builds, so the two runs must agree step by step; the reference nobody here
wrote is the single-process run and Orbax's restore of what the 2-process run saved.

Tolerance: 1e-5 absolute on float32 losses / scores / parameters. The programs are the same SPMD
programs over the same 8-device mesh; only the cross-process reductions (gloo instead of in-process)
may sum in another order. Observed differences are <= 1e-7.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
# A cold compile cache on 2 cores needs ~4 minutes for the 2-process run; a hang fails at this limit.
RUN_TIMEOUT_S = 480
TOL = 1e-5
COMPARED = (
    "d_loss",
    "g_loss",
    "d_acc",
    "teacher_score_mean",
    "student_score_mean",
    "kl_loss",
    "pg_loss",
    "reward_mean",
    "entropy",
    "response_length_mean",
    "rollout_logprob_mean",
)


def _train(run_dir: str, num_processes: int, devices_per_process: int) -> list:
    from gadjax.parallel.distributed import run_local_processes

    argv = [
        "-m",
        "gadjax.train",
        "--config",
        TINY,
        "--config.stage=gad",
        "--config.seed=0",
        "--config.train.steps=3",
        "--config.checkpoint.every=2",
        "--config.mesh.shape=(2,2,2)",
        "--config.data.process_sharding=replicate",
        f"--config.run_dir={run_dir}",
    ]
    procs = run_local_processes(argv, num_processes, devices_per_process, timeout_s=RUN_TIMEOUT_S, cwd=REPO)
    logs = "\n".join(f"--- process {r.process_id} ---\n{r.output[-4000:]}" for r in procs)
    for r in procs:
        assert r.returncode is not None, f"process {r.process_id} hung for > {RUN_TIMEOUT_S}s\n{logs}"
        assert r.returncode == 0, f"process {r.process_id} exited {r.returncode}\n{logs}"
    return procs


def _restore_flat(path: str) -> dict[str, np.ndarray]:
    """An orbax item saved by a run (any process layout), restored whole onto one local device."""
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    meta = ckpt.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
    return {k: np.asarray(v) for k, v in ckpt.restore(path, abstract).items()}


def _tiny_config(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_cfg", TINY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.run_dir = str(tmp_path / "run")
    return c


def _read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_two_processes_train_like_one_process(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _train(one, 1, 8)
    procs = _train(two, 2, 4)

    # Only process 0 writes metrics, TensorBoard, config.json and the export; both ran every step.
    a, b = _read_metrics(one), _read_metrics(two)
    assert [r["step"] for r in a] == [1, 2, 3]
    assert [r["step"] for r in b] == [1, 2, 3], "one metrics record per step (a second writer doubles them)"
    assert len([f for f in os.listdir(os.path.join(two, "tensorboard")) if f.startswith("events")]) == 1
    assert os.path.isfile(os.path.join(two, "config.json"))
    assert "exported the student" in procs[0].output
    assert "exported the student" not in procs[1].output

    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            assert abs(ra[key] - rb[key]) <= TOL, (ra["step"], key, ra[key], rb[key])
    # Not a trivially-constant run: D and G moved.
    assert a[0]["d_loss"] != a[-1]["d_loss"] and a[-1]["kl_loss"] > 0

    # Orbax: every process saved its shards of steps 2 and 3; restored whole they match 1 process.
    for step in (2, 3):
        assert os.path.isfile(os.path.join(two, "checkpoints", str(step), "commit_success.txt"))
    for item in ("g_params", "d_params", "g_opt"):
        pa = _restore_flat(os.path.join(one, "checkpoints", "3", item))
        pb = _restore_flat(os.path.join(two, "checkpoints", "3", item))
        assert pa.keys() == pb.keys() and pa
        for k in pa:
            np.testing.assert_allclose(pb[k], pa[k], rtol=0, atol=TOL, err_msg=f"{item}.{k}")
        # Each process wrote its own shards (OCDBT: one sub-database per process).
        assert {f"ocdbt.process_{i}" for i in (0, 1)} <= set(
            os.listdir(os.path.join(two, "checkpoints", "3", item))
        )
    from gadjax.checkpoint import RunCheckpointer

    ckpt = RunCheckpointer(os.path.join(two, "checkpoints"))
    assert ckpt.latest_step() == 3
    meta = ckpt.read_meta(3)
    ckpt.close()
    assert meta["step"] == 3 and meta["stage"] == "gad" and meta["g_step"] == 3

    # The HF export (gathered from both processes, written by process 0) equals the 1-process one.
    from safetensors.numpy import load_file

    ea = load_file(os.path.join(one, "export", "student", "model.safetensors"))
    eb = load_file(os.path.join(two, "export", "student", "model.safetensors"))
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=0, atol=TOL, err_msg=k)


def test_replicate_builds_the_global_batch_on_every_process(tmp_path, monkeypatch):
    """process_sharding: 'rows' gives process 1 of 2 half the batch from rows [1::2]; 'replicate' gives it
    the single-process pipeline's global batch, which global_host_batch passes through untouched."""
    from gadjax.data.pipeline import DataPipeline
    from gadjax.trainer import build, validation

    c = _tiny_config(tmp_path)
    tok = build.build_tokenizer(c)

    single = build.build_data(c, tok, None)  # 1 process: the reference global batches
    ref = [next(it) for it in [single.iterator()] for _ in range(2)]

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    rows = build.build_data(c, tok, None)
    assert isinstance(rows, DataPipeline) and rows.local_batch_size == c.data.batch_size // 2
    assert rows.shard_indices.start == 1 and rows.shard_indices.step == 2

    c.data.process_sharding = "replicate"
    validation.validate(c)
    rep = build.build_data(c, tok, None)
    assert rep.local_batch_size == c.data.batch_size and rep.process_count == 1
    it = rep.iterator()
    for want in ref:
        got = build.global_host_batch(next(it), rep.pad_id, "replicate")
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_process_sharding_is_validated(tmp_path):
    from gadjax import config as config_lib
    from gadjax.trainer import validation

    c = _tiny_config(tmp_path)
    c.data.process_sharding = "hosts"
    with pytest.raises(config_lib.ConfigValidationError, match=r"config\.data\.process_sharding.*'hosts'"):
        validation.validate(c)
    c.data.process_sharding = "replicate"
    c.teacher.enabled, c.teacher.base_url, c.teacher.model = True, "http://127.0.0.1:1/v1", "t"
    with pytest.raises(config_lib.ConfigValidationError, match=r"config\.data\.process_sharding.*teacher"):
        validation.validate(c)


@pytest.mark.slow
def test_a_preemption_notice_on_one_host_stops_every_host_at_the_same_step(tmp_path):
    """SIGTERM reaches process 1 only, after step 1 of 3 (a maintenance event on one host of a slice):
    the hosts agree through the per-step allgather, both save checkpoint 1 and exit 75 (PREEMPTED_EXIT_CODE);
    the 2-process resume finishes, with each step once in metrics.jsonl, and its losses and exported
    tensors equal the uninterrupted 1-process run's (the same programs; cross-process sums may reorder)."""
    from gadjax.parallel.distributed import run_local_processes
    from gadjax.trainer.preemption import PREEMPTED_EXIT_CODE

    def argv(run_dir, *extra):
        return ["-m", "gadjax.train", "--config", TINY, "--config.stage=seqkd", "--config.train.steps=3",
                "--config.checkpoint.every=2", "--config.mesh.shape=(2,2,2)",
                "--config.data.process_sharding=replicate", f"--config.run_dir={run_dir}",
                *extra]  # fmt: skip

    def launch(run_dir, processes, *extra):
        devices = 8 // processes
        procs = run_local_processes(
            argv(run_dir, *extra), processes, devices, timeout_s=RUN_TIMEOUT_S, cwd=REPO
        )
        logs = "\n".join(f"--- process {r.process_id} ---\n{r.output[-3000:]}" for r in procs)
        return procs, logs

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    procs, logs = launch(one, 1)
    assert procs[0].returncode == 0, logs
    signal_one_host = ("--config.train.debug_signal_at_step=1", "--config.train.debug_signal_process=1")
    procs, logs = launch(two, 2, *signal_one_host)
    assert [r.returncode for r in procs] == [PREEMPTED_EXIT_CODE] * 2, logs
    assert "SIGTERM received" in procs[1].output and "SIGTERM received" not in procs[0].output, logs
    assert all("stopped by SIGTERM after step 1" in r.output for r in procs), logs
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["1"]

    procs, logs = launch(two, 2, "--config.resume=true")
    assert [r.returncode for r in procs] == [0, 0], logs
    a, b = _read_metrics(one), _read_metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["sft_loss"] - rb["sft_loss"]) <= TOL, (ra["step"], ra["sft_loss"], rb["sft_loss"])
    from safetensors.numpy import load_file

    ea = load_file(os.path.join(one, "export", "student", "model.safetensors"))
    eb = load_file(os.path.join(two, "export", "student", "model.safetensors"))
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=0, atol=TOL, err_msg=k)


@pytest.mark.slow
def test_refused_prompts_are_summed_over_hosts_and_every_host_stops_at_the_same_step(tmp_path):
    """A real loopback teacher answers the first 24 distinct prompts and refuses every later one (content
    filter), on a 2-process seqkd run that reads its prompts per process: the skips are summed over the
    hosts every step, so with teacher.max_failed_prompts=1 both processes stop at the same step, both save
    their shards of that step's checkpoint, and both exit 4 (TEACHER_FAILURES_EXIT_CODE) with one line
    naming the limit; no process hangs waiting for the other."""
    import sys

    from gadjax.parallel.distributed import run_local_processes
    from gadjax.train import TEACHER_FAILURES_EXIT_CODE

    sys.path.insert(0, os.path.join(REPO, "tests", "teacher"))
    from fake_server import FakeOpenAI

    prompts = tmp_path / "prompts.jsonl"
    with open(os.path.join(REPO, "configs", "tiny_assets", "train.jsonl"), encoding="utf-8") as src:
        rows = [json.loads(line) for line in src][:64]
    prompts.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    run_dir = str(tmp_path / "run")
    with FakeOpenAI() as srv:
        srv.refuse_after = 24  # 3 steps of 8 prompts; the prefetch (1 ahead per host) reaches refusals sooner
        argv = ["-m", "gadjax.train", "--config", TINY, "--config.stage=seqkd", "--config.train.steps=8",
                "--config.checkpoint.every=100", "--config.mesh.shape=(2,2,2)",
                f"--config.data.train={prompts}", "--config.teacher.enabled=true",
                f"--config.teacher.base_url={srv.base_url}", "--config.teacher.model=fake",
                "--config.teacher.api_key_env=", "--config.teacher.max_tokens=8",
                "--config.teacher.max_ahead=1", "--config.teacher.concurrency=1",  # requests in row order
                "--config.teacher.max_failed_prompts=1", f"--config.run_dir={run_dir}"]  # fmt: skip
        procs = run_local_processes(argv, 2, 4, timeout_s=RUN_TIMEOUT_S, cwd=REPO)
        refused = len(set(srv.prompts_seen("refuse")))
    logs = "\n".join(f"--- process {r.process_id} ---\n{r.output[-3000:]}" for r in procs)
    assert [r.returncode for r in procs] == [TEACHER_FAILURES_EXIT_CODE] * 2, logs
    assert refused >= 2, logs
    for r in procs:
        assert "more than teacher.max_failed_prompts=1" in r.output.strip().splitlines()[-1], logs
    steps = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert len(steps) == 1 and 1 <= int(steps[0]) < 8, (steps, logs)  # one step, the same on both hosts
    assert [r["step"] for r in _read_metrics(run_dir)] == list(range(1, int(steps[0]) + 1))
    # Each process wrote its own shards of the step they stopped at (OCDBT: one sub-database per process).
    item = os.path.join(run_dir, "checkpoints", steps[0], "g_params")
    assert {f"ocdbt.process_{i}" for i in (0, 1)} <= set(os.listdir(item)), os.listdir(item)
