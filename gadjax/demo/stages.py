"""The demo's training stages: its config file (``load_config``), one stage's config (``stage_config``:
warmup, gad or seqkd) and the gadjax.train run of a stage (``train_stage``).
"""

from __future__ import annotations

import os
import shutil
from typing import Any


def load_config(path: str, budget: str) -> Any:
    """``get_config(budget)`` of a configs/*.py file."""
    import importlib.util

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: {path} does not exist")
    spec = importlib.util.spec_from_file_location("gadjax_demo_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(budget)


def stage_config(base: Any, stage: str, run_dir: str, steps: int, lr: float, init_from: str = "") -> Any:
    """A copy of the demo config for one training stage (the `demo` block removed)."""
    c = base.copy_and_resolve_references()
    if "demo" in c:
        del c["demo"]
    c.stage = stage
    c.run_dir = run_dir
    c.train.steps = int(steps)
    c.optim_g.lr = float(lr)
    c.init_from = init_from
    if stage == "seqkd":
        c.loss.kl_beta = 0.0
    return c


def train_stage(cfg: Any) -> dict[str, Any]:
    """One gadjax.train run (a fresh run_dir: an old one from an earlier demo is removed first)."""
    from gadjax import train

    if os.path.isdir(cfg.run_dir):
        shutil.rmtree(cfg.run_dir)
    return train.run(cfg)
