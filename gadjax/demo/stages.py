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


def set_config_value(c: Any, key: str, value: Any) -> None:
    """``c.<key> = value`` for a dotted key (``train.d_updates``); a KeyError names an unknown key."""
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise KeyError(f"config has no key {key!r}")
    node[leaf] = value


def stage_config(
    base: Any, stage: str, run_dir: str, steps: int, lr: float, init_from: str = "", d_lr: float | None = None
) -> Any:
    """A copy of the demo config for one training stage (the `demo` block removed): G's lr ``lr``, D's
    ``d_lr`` when given (the gad stage's own), else the config's."""
    c = base.copy_and_resolve_references()
    if "demo" in c:
        del c["demo"]
    c.stage = stage
    c.run_dir = run_dir
    c.train.steps = int(steps)
    c.optim_g.lr = float(lr)
    if d_lr is not None:
        c.optim_d.lr = float(d_lr)
    c.init_from = init_from
    if stage == "seqkd":
        c.loss.kl_beta = 0.0
    return c


def with_validation(c: Any, stage: str, validation: str, select: bool, start_step: int = 0) -> Any:
    """Evaluate on the validation split every ``demo.eval_every`` steps (sampled at the teacher's
    temperature, as the study: C2ST accuracy and marker gap vs the teacher), and with ``select`` keep the
    best in-band evaluation (gadjax.trainer.evaluation: <run_dir>/export/best, selection.json). The demo
    block must still be in ``c``; call before stage_config drops it. ``start_step``: no evaluation before
    this step (eval.start_step)."""
    d = c.demo
    c.eval.every = int(d.eval_every)
    c.eval.start_step = int(start_step)
    c.eval.data = [validation]
    c.eval.max_prompts = 0
    c.eval.batch_size = int(d.eval_batch_size)
    c.eval.max_new_tokens = int(d.teacher_max_tokens)
    c.eval.temperature = float(d.teacher_temperature)
    c.eval.seed = 1234  # evaluation keys: never a training stream
    c.eval.two_sample = True
    c.select.metric = str(d.select_metric) if select else ""
    c.select.mode = "min"
    # The study breaks C2ST ties by the persona marker gap (gadjax.demo.persona.marker_hit: a word count,
    # not one regex, so the trainer's eval.marker cannot compute it): here ties keep the earlier step.
    c.select.tiebreak = ()
    c.select.length_band = tuple(d.select_length_band)
    c.select.length_reference = "teacher"
    return c


def train_stage(cfg: Any) -> dict[str, Any]:
    """One gadjax.train run (a fresh run_dir: an old one from an earlier demo is removed first)."""
    from gadjax import train

    if os.path.isdir(cfg.run_dir):
        shutil.rmtree(cfg.run_dir)
    return train.run(cfg)


def full_demo_config(repo_root: str) -> Any:
    """configs/demo.py's "full" budget with the embedded model: the base of the data/demo/measure_*.py
    validation sweeps."""
    from gadjax.demo.embedded import require_gguf

    c = load_config(os.path.join(repo_root, "configs", "demo.py"), "full")
    c.model.path = require_gguf()
    return c


def train_for_metrics(cfg: Any) -> list[dict[str, Any]]:
    """``train_stage`` without keeping anything but the metrics: the per-step records of metrics.jsonl;
    the run's checkpoints are deleted (a sweep runs many of them)."""
    import json

    train_stage(cfg)
    with open(os.path.join(cfg.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    shutil.rmtree(os.path.join(cfg.run_dir, "checkpoints"), ignore_errors=True)
    return records
