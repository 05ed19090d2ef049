"""Runs that live on a bucket, end to end through the train CLI, against a real GCS emulator
(fake-gcs-server on loopback, tests/gcs_emulator.py; the storage clients are the real gcsfs and
TensorStore, nothing is mocked).

A spot VM loses its disk with it: each run here starts from an empty local directory
($GADJAX_LOCAL_DIR) and an empty working directory, so everything a resume needs must come from the
bucket: checkpoints, metrics, the data, the warmup a gad stage starts from.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gadjax import paths
from gadjax.metrics import read_metrics
from tests.trainer.train_helpers import REPO, TINY, comparable

TRAIN_JSONL = os.path.join(REPO, "configs", "tiny_assets", "train.jsonl")
TOL = 1e-5  # the multi-host tolerance of tests/test_multihost.py


def _fresh_vm(tmp_path, name: str, gcs) -> tuple[dict, str]:
    """(environment, working directory) of a new VM: empty local disk, the emulator's endpoints."""
    local, cwd = tmp_path / name / "local", tmp_path / name / "cwd"
    cwd.mkdir(parents=True)
    return {**os.environ, **gcs.env, paths.LOCAL_DIR_ENV: str(local)}, str(cwd)


def _train(tmp_path, vm: str, gcs, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env, cwd = _fresh_vm(tmp_path, vm, gcs)
    cmd = [sys.executable, "-m", "gadjax.train", "--config", TINY, "--config.mesh.shape=(2,-1,2)", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert not os.path.exists(os.path.join(cwd, "gs:")), "a gs:// path became a local directory"
    return proc


def _safetensors(directory: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(paths.localize(directory), "model.safetensors"))


@pytest.mark.slow
def test_warmup_on_a_bucket_survives_sigkill_and_gad_starts_from_it(gcs, tmp_path):
    """Warmup with run_dir and data on gs://, a checkpoint every step, SIGKILL after step 2, resumed on a
    "new VM": metrics and the exported student bitwise equal to an uninterrupted run on local disk. Then
    a gad stage whose init_from is the warmup in the bucket."""
    gcs.create_bucket("runs")
    paths.upload(TRAIN_JSONL, "gs://runs/data/part-0.jsonl")
    common = ["--config.stage=warmup", "--config.train.steps=4", "--config.checkpoint.every=1",
              "--config.data.train=gs://runs/data/*.jsonl"]  # fmt: skip
    straight = str(tmp_path / "straight")
    _train(tmp_path, "vm0", gcs, *common, f"--config.run_dir={straight}")

    run = "gs://runs/gad/warmup"
    _train(tmp_path, "vm1", gcs, *common, f"--config.run_dir={run}", "--config.train.debug_kill_at_step=2",
           expect=-9)  # fmt: skip
    assert paths.exists(f"{run}/checkpoints/2/commit_success.txt")
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # pushed with each checkpoint
    _train(tmp_path, "vm2", gcs, *common, f"--config.run_dir={run}", "--config.resume=true")

    a, b = read_metrics(straight), read_metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert comparable(ra) == comparable(rb), ra["step"]
    ea, eb = _safetensors(os.path.join(straight, "export", "student")), _safetensors(f"{run}/export/student")
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
    # The export is a transformers model once downloaded; the run's other files are in the bucket.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(paths.localize(f"{run}/export/student"))
    assert model.config.num_hidden_layers == 2
    assert paths.exists(f"{run}/config.json") and not paths.exists(f"{run}/export/student.partial")
    events = paths.glob(f"{run}/tensorboard/events*")
    assert events and b"warmup/sft_loss" in paths.as_path(events[0]).read_bytes()

    gad = "gs://runs/gad/gad"
    proc = _train(tmp_path, "vm3", gcs, "--config.stage=gad", "--config.train.steps=1",
                  f"--config.init_from={run}", f"--config.run_dir={gad}",
                  "--config.data.train=gs://runs/data/part-0.jsonl")  # fmt: skip
    assert f"initialised from {run} step 4" in proc.stderr
    (rec,) = read_metrics(gad)
    assert rec["stage"] == "gad" and np.isfinite(rec["pg_loss"])


@pytest.mark.slow
def test_two_processes_resume_from_the_bucket_on_new_machines(gcs, tmp_path):
    """2 JAX processes checkpoint into the bucket every step and are both SIGKILLed after step 2; a new
    pair with an empty local disk resumes from the bucket and matches an uninterrupted 1-process run."""
    from gadjax.parallel.distributed import run_local_processes

    gcs.create_bucket("pod")

    def launch(run_dir: str, processes: int, vm: str, *extra: str):
        env, cwd = _fresh_vm(tmp_path, vm, gcs)
        argv = ["-m", "gadjax.train", "--config", TINY, "--config.stage=seqkd", "--config.train.steps=3",
                "--config.checkpoint.every=1", "--config.mesh.shape=(2,2,2)",
                "--config.data.process_sharding=replicate", f"--config.run_dir={run_dir}",
                *extra]  # fmt: skip
        procs = run_local_processes(argv, processes, 8 // processes, timeout_s=480, env=env, cwd=cwd)
        logs = "\n".join(f"--- process {r.process_id} ---\n{r.output[-3000:]}" for r in procs)
        return [r.returncode for r in procs], logs

    one = str(tmp_path / "one")
    codes, logs = launch(one, 1, "vm0")
    assert codes == [0], logs
    two = "gs://pod/seqkd"
    codes, logs = launch(two, 2, "vm1", "--config.train.debug_kill_at_step=2")
    assert codes == [-9, -9], logs
    # Both processes wrote their own shards into the bucket (OCDBT: one sub-database per process).
    shards = {os.path.basename(p) for p in paths.glob(f"{two}/checkpoints/2/g_params/ocdbt.process_*")}
    assert shards == {"ocdbt.process_0", "ocdbt.process_1"}, shards
    codes, logs = launch(two, 2, "vm2", "--config.resume=true")
    assert codes == [0, 0], logs
    assert "resumed from step 2" in logs

    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["sft_loss"] - rb["sft_loss"]) <= TOL, (ra["step"], ra["sft_loss"], rb["sft_loss"])
    ea, eb = _safetensors(os.path.join(one, "export", "student")), _safetensors(f"{two}/export/student")
    for k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=0, atol=TOL, err_msg=k)


@pytest.mark.slow
def test_the_teacher_cache_follows_the_run_to_a_new_vm(gcs, tmp_path):
    """An online teacher (a real loopback server) with run_dir on gs://: the run stops at its spending limit
    (5 answers paid), and a resume on a new VM (empty local disk) with a higher limit pays none of them
    again: the per-process SQLite cache went to the bucket and came back."""
    import json

    sys.path.insert(0, os.path.join(REPO, "tests", "teacher"))
    from fake_server import FakeOpenAI

    gcs.create_bucket("paid")
    with open(TRAIN_JSONL, encoding="utf-8") as src:
        rows = [json.loads(line) for line in src][:24]
    prompts = "".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows)
    paths.write_text("gs://paid/prompts.jsonl", prompts)
    with FakeOpenAI() as srv:
        common = [
            "--config.stage=seqkd", "--config.train.steps=2", "--config.data.train=gs://paid/prompts.jsonl",
            "--config.teacher.enabled=true", f"--config.teacher.base_url={srv.base_url}",
            "--config.teacher.model=fake", "--config.teacher.api_key_env=", "--config.teacher.max_tokens=8",
            "--config.run_dir=gs://paid/run", "--config.checkpoint.every=1",
            "--config.metrics.tensorboard=false",
        ]  # fmt: skip
        _train(tmp_path, "vm1", gcs, *common, "--config.teacher.max_requests=5", expect=3)
        paid_first = set(srv.prompts_seen())
        assert len(paid_first) == 5 and paths.exists("gs://paid/run/teacher_cache.p0.sqlite")
        srv.clear()
        _train(tmp_path, "vm2", gcs, *common, "--config.teacher.max_requests=100", "--config.resume=true")
        assert srv.prompts_seen() and not paid_first & set(srv.prompts_seen())  # nothing paid twice
    assert [r["step"] for r in read_metrics("gs://paid/run")] == [1, 2]


def test_a_run_on_a_missing_bucket_fails_in_one_line_before_any_work(gcs, tmp_path):
    proc = _train(tmp_path, "vm", gcs, "--config.run_dir=gs://no-such-bucket/run", "--config.train.steps=1",
                  expect=74)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert "gs://no-such-bucket/run: no such bucket" in last, proc.stderr[-2000:]


def test_a_resume_with_another_process_count_is_refused_naming_the_rule():
    from gadjax.trainer.state import _check_process_count

    _check_process_count([{"pos": 0}], "gs://b/run/checkpoints")  # 1 saved, 1 here (the test process)
    _check_process_count(None, "gs://b/run/checkpoints")  # meta unreadable: restore reports the damage
    with pytest.raises(ValueError, match=r"data states of 2 processes, this run has 1; .*same slice shape"):
        _check_process_count([{"pos": 0}, {"pos": 5}], "gs://b/run/checkpoints")
