"""The training loop: `Trainer(config).run()` (the CLI is gadjax/train.py).

One loop, three stages (SPEC.md "Stages"), chosen by `config.stage`:

  seqkd   SFT of G on the teacher responses (the baseline).
  warmup  G: SFT on the teacher responses; D: Bradley-Terry against live student samples (N per prompt).
          D trains alone for the first `train.d_only_steps` steps.
  gad     per step: sample N per prompt -> D scores (pre-update) -> GRPO advantages -> D step -> G step
          (PPO clipped surrogate + beta * k3 KL to the frozen reference = G at the start of the stage).

Every step logs to <run_dir>/metrics.jsonl (+ TensorBoard), checkpoints go to <run_dir>/checkpoints
every `checkpoint.every` steps and at the end (`--config.resume` continues exactly), and the final
student is exported as a Hugging Face directory to <run_dir>/export/student. run_dir may be a local
path or a bucket (gs://...): gadjax.paths and gadjax.run_dir say what is written where.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from gadjax import config as config_lib
from gadjax import paths
from gadjax.checkpoint import RunCheckpointer
from gadjax.metrics import MetricsWriter, bar_postfix
from gadjax.models.lora import lora_config
from gadjax.parallel.distributed import wait_for_all_processes
from gadjax.parallel.mesh import MeshDoesNotFitError, make_mesh
from gadjax.rollout.sampler import Sampler
from gadjax.run_dir import RunDir
from gadjax.teacher.errors import TeacherError, TooManyFailedPrompts
from gadjax.trainer import build, validation
from gadjax.trainer.adapters import share_backbone, split_trainable
from gadjax.trainer.evaluation import TrainingEvaluator
from gadjax.trainer.flops import device_peak_flops
from gadjax.trainer.guards import DriftWatch, NonFiniteGuard
from gadjax.trainer.preemption import Preempted, StopRequest
from gadjax.trainer.state import RunStateMixin
from gadjax.trainer.steps import StageStepsMixin

log = logging.getLogger("gadjax.train")
StepHook = Callable[[int, "Trainer"], None]


def trainer_mesh(c: ConfigDict) -> Mesh:
    """The run's mesh over jax.devices(); a shape they cannot fill is a config error (one line, exit 2)."""
    try:
        return make_mesh(tuple(c.mesh.shape))
    except MeshDoesNotFitError as e:
        raise config_lib.ConfigValidationError(f"config.mesh.shape: {e}") from e


class Trainer(RunStateMixin, StageStepsMixin):
    """Holds the run's state; `run()` executes the configured stage to the end."""

    def __init__(self, config: ConfigDict):
        self.config = c = config
        self.stage = c.stage
        self.primary = jax.process_index() == 0
        self.mesh = trainer_mesh(c)
        self.run_dir = RunDir(c.run_dir)  # + this host's working copy for SQLite caches and metrics
        self.tokenizer = build.build_tokenizer(c)
        self.teacher = build.build_teacher(c)
        self.teacher_failed = 0  # prompts the teacher did not answer, skipped so far (all hosts)
        self.data = build.build_data(c, self.tokenizer, self.teacher)
        self.total_steps = c.train.steps or build.steps_per_epoch(self.data) * (c.data.num_epochs or 1)
        self.n = c.rollout.n_samples
        # SPEC.md "Temperature": the policy update's log-probs use the rollout temperature (greedy: 1).
        self.logprob_temperature = float(c.rollout.temperature) if c.rollout.temperature > 0 else 1.0
        self.stream_seed = config_lib.stage_seed(c.seed, c.stage)
        self.d_frozen = self.stage == "gad" and bool(c.disc.frozen)
        self.reward_fn = build.build_reward(c, self.tokenizer) if self.stage == "gad" else None
        log.info("stage %s: %d steps, mesh %s", self.stage, self.total_steps, dict(self.mesh.shape))

        # Built outside use_mesh: nnx.eval_shape would read the logical names as mesh axes there.
        student = build.build_student(c, self.mesh)
        self.model_config = student.config
        disc = build.build_discriminator(c, self.mesh, student) if self.stage != "seqkd" else None
        # LoRA (model.lora / disc.lora): adapters are attached now, after D copied the student's weights.
        base_dtype = build.DTYPES[c.model.base_dtype] if c.model.base_dtype else None
        self.g_parts, g_params = split_trainable(
            student, lora_config(c.model.lora), jax.random.key(c.seed + 2), self.mesh, base_dtype
        )
        self.g_graphdef = self.g_parts.graphdef
        self.d_parts, d_params = (
            split_trainable(disc, lora_config(c.disc.lora), jax.random.key(c.seed + 3), self.mesh, base_dtype)
            if disc is not None
            else (None, None)
        )
        self.d_graphdef = self.d_parts.graphdef if disc is not None else None
        if (
            disc is not None
            and self.g_parts.base is not None
            and self.d_parts.base is not None
            and not c.disc.path
        ):
            share_backbone(self.d_parts, self.g_parts)  # D's frozen backbone = G's frozen base
        self.reference_source = {"model": c.model.path or "random_init", "init_from": c.init_from}
        wait_for_all_processes("gadjax_models_built")  # before the first collective (restores, saves)
        if c.init_from:
            g_params, d_params = self._init_from(c.init_from, g_params, d_params)
        # SPEC.md: the reference is G at the start of the GAD stage (a copy: G's buffers get donated).
        # With LoRA only the adapters are copied: the reference shares G's frozen base.
        self.ref_params = build.copy_tree(g_params) if self.stage == "gad" else None

        self.g_opt = build.build_optimizer(c.optim_g, self.total_steps)
        self.g_state, self.g_shardings = self._train_state(g_params, self.g_opt)
        if disc is not None:
            self.d_opt = build.build_optimizer(c.optim_d, self.total_steps * c.train.d_updates)
            self.d_state, self.d_shardings = self._train_state(d_params, self.d_opt)
        else:
            self.d_state = None
        self.sampler = (
            Sampler(  # samples from the plain model; with LoRA the adapters are merged per rollout
                (self.g_parts.plain_graphdef, g_params if self.g_parts.base is None else self.g_parts.base),
                build.sampling_config(c, self.tokenizer, self.model_config),
                mesh=self.mesh,
            )
            if self.stage != "seqkd"
            else None
        )
        self._programs: dict[str, Any] = {}
        ckpt_dir = c.checkpoint.dir or paths.join(c.run_dir, "checkpoints")
        self.ckpt = RunCheckpointer(ckpt_dir, keep=c.checkpoint.keep)
        self.start_step = 0
        self.data_state = None
        latest = self.ckpt.latest_step()
        if latest is not None and not c.resume:
            # Never mix two runs' checkpoints and metrics in one directory.
            raise ValueError(
                f"config.run_dir: {c.run_dir} already holds checkpoints (latest step {latest}); pass "
                "--config.resume=true to continue that run, or choose a new run_dir"
            )
        if c.resume and latest is not None:
            self._resume()
        self.data_iter = self.data.iterator(self.data_state)
        self.metrics = MetricsWriter(
            c.run_dir,
            tensorboard=c.metrics.tensorboard,
            wandb=c.metrics.wandb,
            wandb_project=c.metrics.wandb_project,
            config=c.to_dict(),
            primary=self.primary,
            resume_step=self.start_step if c.resume else None,
            sync_every_s=c.metrics.sync_every_s,
        )
        self.evaluator = None
        self.best_ckpt = None
        if c.eval.every:
            self.evaluator = TrainingEvaluator(c, self.tokenizer, self.mesh, self.primary)
            if c.resume:
                self.evaluator.forget_after(self.start_step)
            if c.select.metric:  # one slot, outside the keep-N rotation; saved rarely, so synchronously
                self.best_ckpt = RunCheckpointer(paths.join(c.run_dir, "best"), keep=1, async_save=False)
        self.nonfinite = NonFiniteGuard(c.train.max_bad_steps)
        g = c.guards
        self.drift = DriftWatch(g.response_length_max_ratio, g.d_acc_low, g.d_acc_high, g.window)
        self.peak = device_peak_flops(c.peak_flops_per_device)

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self, on_step: StepHook | None = None) -> dict[str, Any]:
        """Train to the end. ``on_step(steps_done, trainer)`` runs after each step's metrics are written
        (e.g. an evaluation of ``trainer.student_params()``); it must draw no randomness from the
        training streams, so a run with a hook trains exactly as one without.

        SIGTERM / SIGINT (gadjax.trainer.preemption): the current step finishes, its checkpoint is saved
        and metrics flushed, and ``Preempted`` is raised (the CLI exits with PREEMPTED_EXIT_CODE)."""
        c = self.config
        bar = None
        if c.metrics.progress and self.primary:
            from tqdm import tqdm

            bar = tqdm(
                total=self.total_steps, initial=self.start_step, desc=f"gadjax {self.stage}", unit="step"
            )
        last: dict[str, Any] = {}
        done = self.start_step
        stop = StopRequest()
        try:
            with stop:
                for step in range(self.start_step, self.total_steps):
                    try:
                        metrics = self.step(step)
                    except StopIteration:
                        log.info("data exhausted at step %d", step)
                        break
                    except (TeacherError, TooManyFailedPrompts) as e:
                        # A spending limit, too many prompts skipped, or an endpoint that fails every
                        # prompt: every host stops before step `step` (the data state is the last trained
                        # batch's: a half-read or unread batch is read again on resume), so checkpoint the
                        # steps done.
                        if done > 0 and self.ckpt.latest_step() != done:
                            self._save(done, force=True)
                        self.ckpt.wait()
                        log.error(
                            "teacher: stopped before step %d (%s); resume continues from checkpoint %s",
                            step + 1,
                            type(e).__name__,
                            self.ckpt.latest_step(),
                        )
                        raise
                    done = step + 1
                    if self.evaluator is not None and self.evaluator.due(done, self.total_steps):
                        metrics.update(self._evaluate(done, self.evaluator.judge_due(done, self.total_steps)))
                    self.nonfinite.update(step, metrics)
                    metrics["drift_warnings"] = len(self.drift.update(step, metrics))
                    last = self.metrics.write(step + 1, metrics, stage=self.stage)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(bar_postfix(last))
                    if on_step is not None:
                        on_step(step + 1, self)
                    if (step + 1) % c.checkpoint.every == 0 and step + 1 < self.total_steps:
                        self._save(step + 1)
                    if c.train.debug_kill_at_step and step + 1 == c.train.debug_kill_at_step:
                        self.ckpt.wait()  # the kill lands after the checkpoint is committed
                        # and after every host's wait: a host killed first would leave another inside
                        # orbax's closing barrier, which then aborts (SIGABRT) instead of being killed.
                        wait_for_all_processes("gadjax_debug_kill")
                        os.kill(os.getpid(), signal.SIGKILL)
                    if (
                        c.train.debug_signal_at_step
                        and step + 1 == c.train.debug_signal_at_step
                        and c.train.debug_signal_process in (-1, jax.process_index())
                    ):
                        os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice would, mid-run
                    signame = stop.agreed() if step + 1 < self.total_steps else None
                    if signame is not None:  # every host stops after the same step
                        if self.ckpt.latest_step() != done:
                            self._save(done, force=True)
                        self.ckpt.wait()
                        raise Preempted(done, signame)
                if self.ckpt.latest_step() != done:
                    self._save(done, force=True)
                self.ckpt.wait()
                if c.export.hf:
                    self.export()
                    if self.best_ckpt is not None and self.best_ckpt.latest_step() is not None:
                        self.export_best()
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
            try:  # a spending limit or an error: what was paid for is kept (not over the original error)
                self.push_caches()
            except Exception as e:  # noqa: BLE001
                log.error("could not copy the caches to %s: %s", c.run_dir, " ".join(str(e).split())[:300])
            self.ckpt.close()
            if self.best_ckpt is not None:
                self.best_ckpt.close()
            if self.teacher is not None:
                self.teacher.close()
        return last

    def _evaluate(self, steps_done: int, with_judge: bool) -> dict[str, Any]:
        """eval.* on the current student; a new best (select.*) is saved to <run_dir>/best."""
        t0 = time.perf_counter()
        disc = self.disc_scores if self.d_state is not None else None  # warmup, gad: D on validation
        metrics, new_best = self.evaluator.evaluate(steps_done, self.student_params(), with_judge, disc)
        if new_best and self.best_ckpt is not None:
            self.best_ckpt.save(
                steps_done,
                {"g_params": self.g_state.params},
                {"stage": self.stage, "step": steps_done},
                force=True,
            )
            log.info("step %d: new best %s", steps_done, self.config.select.metric)
        self.evaluator.write_selection()  # after the checkpoint it names is committed
        log.info("step %d: evaluation %.1f s", steps_done, time.perf_counter() - t0)
        return metrics


def run(config: ConfigDict, on_step: StepHook | None = None) -> dict[str, Any]:
    """Validate `config` and train; returns the last step's metrics record. ``on_step``: Trainer.run."""
    validation.validate(config_lib.stage_defaults(config))
    from gadjax.parallel.distributed import initialize_distributed

    d = config.distributed
    initialize_distributed(
        d.coordinator_address or None,
        d.num_processes or None,
        d.process_id if d.process_id >= 0 else None,
    )
    if jax.process_index() == 0:
        # A missing bucket, missing credentials or permission fail here, in one line, before any work.
        paths.check_writable(config.run_dir)
        paths.write_text(
            paths.join(config.run_dir, "config.json"), json.dumps(config.to_dict(), indent=2, default=str)
        )
    return Trainer(config).run(on_step)
