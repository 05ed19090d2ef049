"""The trainer's state: train states, initialisation from an earlier run, resume, save and export.

A mixin of gadjax.trainer.loop.Trainer (it reads the attributes Trainer.__init__ sets: config, mesh,
g_/d_state, g_/d_graphdef, ckpt, data_iter, tokenizer). Checkpoint layout: gadjax/checkpoint.py.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from gadjax import paths
from gadjax.algo.steps import (
    TrainState,
)
from gadjax.checkpoint import RunCheckpointer
from gadjax.models.sharding import state_shardings
from gadjax.parallel.distributed import allgather_json
from gadjax.parallel.programs import train_state_shardings
from gadjax.parallel.rules import use_mesh
from gadjax.trainer import build
from gadjax.trainer.evaluation import JUDGE_CACHE

log = logging.getLogger("gadjax.train")


def _check_process_count(data_states: list | None, directory: str) -> None:
    """A run resumes with as many processes as it saved with: each saved its own data iterator position
    (hosts read different shards). The devices may be new VMs; the slice shape and process count stay."""
    if data_states is not None and len(data_states) != jax.process_count():
        raise ValueError(
            f"config.resume: the checkpoints in {directory} hold data states of {len(data_states)} "
            f"processes, this run has {jax.process_count()}; resume on the same slice shape (as many hosts)"
        )


class RunStateMixin:
    """Train states, init_from, resume, save and HF export of a Trainer."""

    # ---- state ------------------------------------------------------------------------------------
    def _train_state(self, params: Any, optimizer: Any) -> tuple[TrainState, TrainState]:
        param_sh = state_shardings(params, self.mesh)
        abstract = jax.eval_shape(lambda p: TrainState.create(p, optimizer), params)
        shardings = train_state_shardings(abstract, param_sh, self.mesh)
        with use_mesh(self.mesh):
            state = jax.jit(lambda p: TrainState.create(p, optimizer), out_shardings=shardings)(params)
        return state, shardings

    def _init_from(self, run_dir: str, g_params: Any, d_params: Any) -> tuple[Any, Any]:
        """G (and D) parameters from an earlier run's latest checkpoint (e.g. warmup -> gad)."""
        src = RunCheckpointer(paths.join(run_dir, "checkpoints"))
        step = src.latest_step()
        templates = {"g_params": g_params}
        meta = src.read_meta(step)
        ours = self._lora_meta()
        theirs = meta.get("lora", {"g": False, "d": False})
        d_too = d_params is not None and meta.get("has_d") and self.config.disc.from_init_run
        if theirs["g"] != ours["g"] or (d_too and theirs["d"] != ours["d"]):
            raise ValueError(
                f"config.init_from: {run_dir} was trained with LoRA {theirs} (G / D adapters), this config "
                f"has {ours}; a stage hand-off keeps the same model.lora / disc.lora setting"
            )
        if d_params is not None and meta.get("has_d") and self.config.disc.from_init_run:
            templates["d_params"] = d_params
        trees, meta = src.restore(step, templates)
        src.close()
        self.reference_source["init_from_step"] = step
        log.info("initialised from %s step %d (stage %s)", run_dir, step, meta.get("stage"))
        return trees["g_params"], trees.get("d_params", d_params)

    def _resume(self) -> None:
        try:  # before restoring: a LoRA mismatch would otherwise surface as an orbax tree mismatch
            meta = self.ckpt.read_meta()
        except Exception:  # a damaged newest checkpoint: restore_newest_good below reports and skips it
            meta = {}
        _check_process_count(meta.get("data_states"), self.ckpt.directory)  # before the slow restore
        if meta and meta.get("lora", {"g": False, "d": False}) != self._lora_meta():
            raise ValueError(
                f"config.resume: the checkpoints in {self.ckpt.directory} were trained with LoRA "
                f"{meta.get('lora')} (G / D adapters), this config has {self._lora_meta()}; resume with the "
                "same model.lora / disc.lora"
            )
        templates = {"g_params": self.g_state.params, "g_opt": self.g_state.opt_state}
        if self.d_state is not None:
            templates.update(d_params=self.d_state.params, d_opt=self.d_state.opt_state)
        trees, meta, _ = self.ckpt.restore_newest_good(templates)
        if meta["stage"] != self.stage:
            raise ValueError(
                f"config.resume: the checkpoint in {self.ckpt.directory} is from stage {meta['stage']!r}, "
                f"the config says {self.stage!r}"
            )
        if meta.get("reference_source") != self.reference_source:
            raise ValueError(
                f"config.resume: the reference source changed (checkpoint {meta.get('reference_source')}, "
                f"config {self.reference_source}); resume with the same model.path / init_from"
            )
        g_step = jnp.asarray(meta["g_step"], jnp.int32)
        self.g_state = TrainState(step=g_step, params=trees["g_params"], opt_state=trees["g_opt"])
        if self.d_state is not None:
            d_step = jnp.asarray(meta["d_step"], jnp.int32)
            self.d_state = TrainState(step=d_step, params=trees["d_params"], opt_state=trees["d_opt"])
        self.start_step = int(meta["step"])
        states = meta["data_states"]
        _check_process_count(states, self.ckpt.directory)
        self.data_state = states[jax.process_index()]
        log.info("resumed from step %d", self.start_step)

    def _save(self, step: int, *, force: bool = False) -> None:
        trees = {"g_params": self.g_state.params, "g_opt": self.g_state.opt_state}
        if self.d_state is not None:
            trees.update(d_params=self.d_state.params, d_opt=self.d_state.opt_state)
        meta = {
            "stage": self.stage,
            "step": step,
            "seed": self.config.seed,
            "has_d": self.d_state is not None,
            "g_step": int(self.g_state.step),
            "d_step": int(self.d_state.step) if self.d_state is not None else 0,
            # Each host's own iterator position (hosts read different shards; process 0 writes meta).
            "data_states": allgather_json(self.data_iter.get_state()),
            "reference_source": self.reference_source,
            "lora": self._lora_meta(),
        }
        self.ckpt.save(step, trees, meta, force=force)
        self.metrics.sync()
        self.push_caches()

    def push_caches(self) -> None:
        """With a gs:// run_dir: copy the SQLite caches that live on this host into the bucket (at each
        checkpoint, and when the run stops for any reason), so a run resumed on a new VM does not pay the
        teacher or the judge again for what it received (gadjax.run_dir)."""
        c = self.config
        if self.teacher is not None and not c.teacher.cache_path:
            self.run_dir.push(build.teacher_cache_name())
        judge = self.evaluator is not None and self.evaluator.judge is not None
        if self.primary and judge and not c.eval.judge.cache_path:
            self.run_dir.push(JUDGE_CACHE)

    def _lora_meta(self) -> dict[str, bool]:
        """Which models train adapters: the checkpointed params are then the adapters (and D's head)."""
        return {
            "g": self.g_parts.lora is not None,
            "d": self.d_parts is not None and self.d_parts.lora is not None,
        }

    def _export_student(self, params: Any, out: str) -> None:
        """HF export of G (adapters merged); with LoRA also a PEFT adapter directory at <out>_adapter."""
        from gadjax.models.hf_export import save_hf_checkpoint

        dtype = self.config.export.dtype or None
        save_hf_checkpoint(self.g_parts.module(params), out, tokenizer=self.tokenizer, dtype=dtype)
        if self.g_parts.lora is not None:
            from gadjax.models.peft_io import save_peft_adapter

            save_peft_adapter(params, self.g_parts.lora, self.model_config, out + "_adapter")

    def export_best(self) -> None:
        """HF export of the selected student to export/best (selection.json says which step and why)."""
        trees, meta = self.best_ckpt.restore(None, {"g_params": self.g_state.params})
        out = paths.join(self.config.run_dir, "export", "best")
        self._export_student(trees["g_params"], out)
        if self.primary:
            log.info("exported the selected student (step %d) to %s", meta["step"], out)

    def student_params(self) -> tuple[Any, Any]:
        """(graphdef, params) of the current student, for evaluation between steps (read-only); with
        LoRA the plain model's graphdef and the merged weights."""
        return self.g_parts.plain_graphdef, self.g_parts.full_params(self.g_state.params)

    def export(self) -> None:
        """HF export of the student (and the discriminator when export.discriminator)."""
        from gadjax.models.hf_export import save_hf_checkpoint

        out = paths.join(self.config.run_dir, "export")
        self._export_student(self.g_state.params, paths.join(out, "student"))
        if self.config.export.discriminator and self.d_state is not None:
            disc = self.d_parts.module(self.d_state.params)
            dtype = self.config.export.dtype or None
            save_hf_checkpoint(disc, paths.join(out, "discriminator"), tokenizer=self.tokenizer, dtype=dtype)
        if self.primary:
            log.info("exported the student to %s", paths.join(out, "student"))
