"""Orbax checkpoints of a GAD run: G and D (params + optimizer state), step, stage, data iterator state.

Layout under `<run_dir>/checkpoints/<step>/` (an orbax CheckpointManager, atomic per step: a save
killed halfway leaves no half-written step behind):

    g_params, g_opt, d_params, d_opt   array trees (flattened to {path: array} so the on-disk names
                                       say what each array is)
    meta                               JSON: stage, step, seed, data iterator state, reference source

Randomness needs no saved state: step k draws from fold_in(key(seed), k), so resuming at k gives the
same keys an uninterrupted run would. All processes take part in save and restore (orbax coordinates);
restore places every array directly in the sharding of the abstract target.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

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
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, trees: dict[str, Any], meta: dict[str, Any], *, force: bool = False) -> None:
        """trees: any of ARRAY_ITEMS -> pytree of jax.Arrays; meta: JSON-serialisable."""
        args = {name: ocp.args.StandardSave(_flatten(tree)) for name, tree in trees.items()}
        args["meta"] = ocp.args.JsonSave(meta)
        self._mngr.save(step, args=ocp.args.Composite(**args), force=force)

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

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        restored = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
