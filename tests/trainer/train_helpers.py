"""Shared by the trainer's end-to-end tests: configs/tiny.py with overrides, the train CLI in a subprocess,
and the metrics that must match between two runs (everything but timings)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")
# configs/tiny.py takes every device as FSDP; the tests run data x fsdp x tensor on the 8 emulated devices.
TEST_MESH = (2, -1, 2)
NOT_COMPARED = ("time", "tokens_per_s", "flops_per_s", "mfu")


def tiny_config(tmp_path, **overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_cfg", TINY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.run_dir = str(tmp_path / "run")
    c.mesh.shape = TEST_MESH
    for key, value in overrides.items():
        node = c
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return c


def run_cli(tmp_path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    mesh = [] if any(a.startswith("--config.mesh.shape=") for a in args) else ["--config.mesh.shape=(2,-1,2)"]
    cmd = [sys.executable, "-m", "gadjax.train", "--config", TINY, *mesh, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not (k.startswith("time") or k in NOT_COMPARED)}
