"""Metric sinks: JSONL (always), TensorBoard (tensorboardX), optional Weights & Biases, a tqdm bar.

Only the primary process (jax.process_index() == 0) writes; the others get a writer that drops.
With a ``gs://`` run_dir the files are written on this host (object storage has no append) and copied
into the run_dir every ``sync_every_s`` seconds, at each :meth:`MetricsWriter.sync` (the trainer calls it
at checkpoints) and at close (gadjax.run_dir).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from typing import Any

import numpy as np

from gadjax import paths
from gadjax.run_dir import RunDir

# The W&B run id of a run_dir, so that a resumed run logs into the same W&B run (not a new one).
WANDB_ID_FILE = "wandb_run_id"

# Keys shown on the progress bar, in order, when present.
BAR_KEYS = ("d_loss", "d_acc", "sft_loss", "pg_loss", "kl_loss", "reward_mean", "response_length_mean")


def _scalar(v: Any) -> float | int | None:
    """A JSON-able scalar, or None for arrays (per-row values are not logged)."""
    a = np.asarray(v)
    if a.ndim != 0:
        return None
    x = a.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    return x


class MetricsWriter:
    """Append one record per step to `<run_dir>/metrics.jsonl` (+ TensorBoard / W&B when enabled)."""

    def __init__(
        self,
        run_dir: str,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "gadjax",
        config: dict[str, Any] | None = None,
        primary: bool = True,
        resume_step: int | None = None,
        sync_every_s: float = 300.0,
    ):
        """``resume_step``: the run resumes after this step; records of later steps (written before a
        crash or preemption, and about to be redone) move to metrics.replaced.jsonl, so metrics.jsonl
        holds each step once. ``sync_every_s``: how often a remote run_dir gets the files (gs:// only)."""
        self.primary = primary
        self._file = None
        self._tb = None
        self._wandb = None
        self._sync_every_s = sync_every_s
        self._last_sync = time.monotonic()
        if not primary:
            return
        self.run_dir = RunDir(run_dir)
        self.path = self.run_dir.local_path("metrics.jsonl")
        if resume_step is not None:
            # A resumed run on a new VM continues the records the bucket has (up to its checkpoint).
            self.run_dir.fetch("metrics.jsonl", overwrite=True)
            self.run_dir.fetch("metrics.replaced.jsonl", overwrite=True)
            if os.path.exists(self.path):
                self._drop_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self.run_dir.local_path("tensorboard"))
        if wandb:
            self._wandb = self._init_wandb(wandb_project, config or {}, resuming=resume_step is not None)

    def _init_wandb(self, project: str, config: dict[str, Any], *, resuming: bool) -> Any:
        """wandb.init with the run_dir's W&B run id: a resumed run continues its W&B run (id=...,
        resume="allow"); a new one gets a fresh id, stored in <run_dir>/wandb_run_id for its resumes."""
        try:
            import wandb as wb  # optional dependency
        except ImportError:
            raise ValueError("config.metrics.wandb: wandb is not installed (pip install wandb)") from None
        run_id, path = None, self.run_dir.local_path(WANDB_ID_FILE)
        if resuming:
            self.run_dir.fetch(WANDB_ID_FILE, overwrite=True)  # a resume on a new VM: the bucket's copy
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    run_id = f.read().strip() or None
        if run_id is None:
            run_id = secrets.token_hex(8)  # W&B ids: letters and digits
            with open(path, "w", encoding="utf-8") as f:
                f.write(run_id + "\n")
            self.run_dir.push(WANDB_ID_FILE)
        return wb.init(project=project, dir=self.run_dir.local, config=config, id=run_id, resume="allow")

    def _drop_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        later = [json.loads(line).get("step", 0) > step for line in lines]
        if not any(later):
            return
        keep = [line for line, after in zip(lines, later, strict=True) if not after]
        with open(
            os.path.join(os.path.dirname(self.path), "metrics.replaced.jsonl"), "a", encoding="utf-8"
        ) as f:
            f.writelines(line for line, after in zip(lines, later, strict=True) if after)
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, metrics: dict[str, Any], *, stage: str) -> dict[str, Any]:
        """Write the scalar metrics of `step`; returns the record written."""
        record: dict[str, Any] = {"step": int(step), "stage": stage, "time": time.time()}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is not None or (np.asarray(v).ndim == 0):
                record[k] = s
        if not self.primary:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{stage}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{stage}/{k}": v for k, v in record.items() if k != "stage"}, step=step)
        if self.run_dir.remote and time.monotonic() - self._last_sync >= self._sync_every_s:
            self.sync()
        return record

    def sync(self) -> None:
        """Flush, and copy the files into a remote run_dir (nothing to copy for a local one)."""
        if not self.primary:
            return
        if self._file is not None and not self._file.closed:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()
        for name in ("metrics.jsonl", "metrics.replaced.jsonl", "tensorboard"):
            self.run_dir.push(name)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self.primary:
            self.sync()
        if self._wandb is not None:
            self._wandb.finish()


def bar_postfix(record: dict[str, Any]) -> dict[str, str]:
    return {k: f"{record[k]:.3g}" for k in BAR_KEYS if isinstance(record.get(k), (int, float))}


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """All records of `<run_dir>/metrics.jsonl`, local or gs:// (for reports and tests)."""
    text = paths.read_text(paths.join(run_dir, "metrics.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]
