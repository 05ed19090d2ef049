"""Orbax checkpoints of a GAD run: G and D (params + optimizer state), step, stage, data iterator state.

Layout under `<run_dir>/checkpoints/<step>/` (an orbax CheckpointManager, atomic per step: a save
killed halfway leaves no half-written step behind):

    g_params, g_opt, d_params, d_opt   array trees (flattened to {path: array} so the on-disk names
                                       say what each array is)
    meta                               JSON: stage, step, seed, data iterator state, reference source

Randomness needs no saved state: step k draws from fold_in(key(seed), k), so resuming at k gives the
same keys an uninterrupted run would. All processes take part in save and restore (orbax coordinates);
restore places every array directly in the sharding of the abstract target.

The directory may be local or on object storage (``gs://``): orbax writes both, committing a step on
GCS with a ``commit_success.txt`` written last instead of a rename. Every process writes its own array
shards into the same directory, so a multi-host run needs storage all hosts see (a bucket, or a shared
filesystem); a restore on a new set of VMs reads them back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from gadjax import paths
from gadjax.storage import StorageWriteError, write_failure

log = logging.getLogger(__name__)

ARRAY_ITEMS = ("g_params", "g_opt", "d_params", "d_opt")


def _flatten(tree: Any) -> dict[str, Any]:
    """{'params.blocks.q': leaf, ...}: a flat dict keyed by readable tree paths."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = jax.tree_util.keystr(path, simple=True, separator=".") or "value"
        out[key] = leaf
    return out


def _unflatten(template: Any, flat: dict[str, Any]) -> Any:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p, simple=True, separator=".") or "value" for p, _ in leaves_with_path]
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each array's sharding (the restore target)."""

    def one(x: Any) -> Any:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


class RunCheckpointer:
    """Save / restore a run's state every `every` steps, keeping the newest `keep`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = paths.absolute(directory)  # gs://... stays a URL
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step whose background write is not yet committed
        self._failure: StorageWriteError | None = None  # a failed write, reported once

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, trees: dict[str, Any], meta: dict[str, Any], *, force: bool = False) -> None:
        """trees: any of ARRAY_ITEMS -> pytree of jax.Arrays; meta: JSON-serialisable. The write runs in
        the background; its failure (a full disk) is raised as StorageWriteError here at the next save,
        or by `wait`."""
        args = {name: ocp.args.StandardSave(_flatten(tree)) for name, tree in trees.items()}
        args["meta"] = ocp.args.JsonSave(meta)
        with self._write_errors():
            self._mngr.save(step, args=ocp.args.Composite(**args), force=force)
        self._pending = step

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """Any failure of orbax's (background) write is a StorageWriteError that says what is intact.
        The keep-N rotation deletes old steps only after a new one commits, so every committed step is."""
        try:
            yield
        except Exception as e:  # noqa: BLE001  tensorstore reports a full disk as ValueError, orbax wraps it
            if self._failure is None:
                self._mngr.reload()
                kept = (
                    f"Committed checkpoints {list(self._mngr.all_steps())} are intact; the partial write "
                    "(*.orbax-checkpoint-tmp) can be deleted."
                )
                self._failure = write_failure(f"checkpoint {self._pending}", self.directory, e, kept)
            raise self._failure from e

    def restore(self, step: int | None, templates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the items named in `templates` (pytrees of arrays or ShapeDtypeStructs with the target
        shardings) at `step` (None: latest). Returns (trees, meta)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        args = {name: ocp.args.StandardRestore(_flatten(_abstract(tmpl))) for name, tmpl in templates.items()}
        args["meta"] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
        trees = {name: _unflatten(tmpl, restored[name]) for name, tmpl in templates.items()}
        return trees, dict(restored["meta"])

    def restore_newest_good(self, templates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Restore the newest checkpoint that CAN be restored; returns (trees, meta, step).

        A step that fails to restore (files truncated by a full disk, removed by hand) is logged with what
        was wrong, renamed to ``<step>.damaged-<time>`` (kept for inspection, and out of orbax's way:
        it would otherwise refuse to save any step up to it) and the next older one is tried. Raises
        ValueError naming every failure when none restores. Multi-host: assumes every host sees the same
        files (a shared filesystem such as GCS), so all fall back to the same step.
        """
        steps = sorted(self._mngr.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        problems, failed = [], []
        for step in steps:
            try:
                trees, meta = self.restore(step, templates)
            except Exception as e:  # noqa: BLE001  orbax / tensorstore raise many kinds for damaged files
                why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                problems.append(f"step {step}: {why}")
                failed.append(step)
                log.warning(
                    "checkpoint %s/%d cannot be restored (%s); trying an older one", self.directory, step, why
                )
                continue
            if problems:
                self._set_aside(failed)
                log.warning(
                    "resumed from checkpoint %d, not the newest: %s (set aside as *.damaged-*)",
                    step,
                    "; ".join(problems),
                )
            return trees, meta, step
        raise ValueError(f"{self.directory}: no checkpoint can be restored: " + "; ".join(problems))

    def _set_aside(self, steps: list[int]) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if jax.process_index() == 0:
            for step in steps:
                src = paths.as_path(self.directory) / str(step)
                if src.is_dir():  # on object storage a rename copies and deletes each file
                    src.rename(f"{os.fspath(src)}.damaged-{stamp}")
        from gadjax.parallel.distributed import sync_global_devices

        sync_global_devices("gadjax_checkpoint_set_aside")
        self._mngr.reload()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        restored = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        """Block until the background save is committed (StorageWriteError if it failed)."""
        with self._write_errors():
            self._mngr.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        """Wait and release; a failed write already raised by save / wait is not raised again."""
        try:
            if self._failure is None:
                self.wait()
        finally:
            with contextlib.suppress(Exception) if self._failure is not None else contextlib.nullcontext():
                self._mngr.close()
