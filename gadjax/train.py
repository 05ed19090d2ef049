"""gadjax trainer: `python -m gadjax.train --config configs/X.py [--config.key=value ...]`.

One loop, three stages (SPEC.md "Stages"), chosen by `config.stage`:

  seqkd   SFT of G on the teacher responses (the baseline).
  warmup  G: SFT on the teacher responses; D: Bradley-Terry against live student samples (N per prompt).
          D trains alone for the first `train.d_only_steps` steps.
  gad     per step: sample N per prompt -> D scores (pre-update) -> GRPO advantages -> D step -> G step
          (PPO clipped surrogate + beta * k3 KL to the frozen reference = G at the start of the stage).

Every step logs to <run_dir>/metrics.jsonl (+ TensorBoard), checkpoints go to <run_dir>/checkpoints
every `checkpoint.every` steps and at the end (`--config.resume` continues exactly), and the final
student is exported as a Hugging Face directory to <run_dir>/export/student.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from gadjax import config as config_lib
from gadjax.algo.steps import (
    PolicyLossConfig,
    TrainState,
    group_advantages,
    make_discriminator_step,
    make_logprob_fn,
    make_policy_step,
    make_sft_step,
)
from gadjax.checkpoint import RunCheckpointer
from gadjax.metrics import MetricsWriter, bar_postfix
from gadjax.models.sharding import state_shardings
from gadjax.parallel.distributed import allgather_json
from gadjax.parallel.mesh import make_mesh
from gadjax.parallel.programs import jit_forward, jit_step, shard_batch, train_state_shardings
from gadjax.parallel.rules import use_mesh
from gadjax.rollout.sampler import Sampler
from gadjax.teacher.client import SpendingLimitReached
from gadjax.trainer import build
from gadjax.trainer.evaluation import TrainingEvaluator
from gadjax.trainer.flops import device_peak_flops, forward_flops_per_token, train_flops
from gadjax.trainer.guards import DriftWatch, NonFiniteGuard
from gadjax.trainer.preemption import PREEMPTED_EXIT_CODE, Preempted, StopRequest

SPENDING_LIMIT_EXIT_CODE = 3  # teacher.max_requests / max_total_tokens reached (as gadjax.teacher.collect)

log = logging.getLogger("gadjax.train")
StepHook = Callable[[int, "Trainer"], None]


class _Timer:
    """Wall time of named phases within one step (each phase ends with a blocking fetch)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.times[f"time_{name}_s"] = self.times.get(f"time_{name}_s", 0.0) + time.perf_counter() - t0


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Name a step's generic update metrics by model (g_loss, d_grad_norm, ...); others keep their name."""
    return {(prefix + k if k in ("loss", "grad_norm", "skipped", "lr") else k): v for k, v in metrics.items()}


def _block(metrics: dict[str, Any]) -> dict[str, Any]:
    """Fetch a step's metrics: blocks on the step (DESIGN.md: on CPU, never queue collective programs)."""
    return {k: np.asarray(v) for k, v in metrics.items()}


class Trainer:
    """Holds the run's state; `run()` executes the configured stage to the end."""

    def __init__(self, config: ConfigDict):
        self.config = c = config
        self.stage = c.stage
        self.primary = jax.process_index() == 0
        self.mesh = make_mesh(tuple(c.mesh.shape))
        os.makedirs(c.run_dir, exist_ok=True)
        self.tokenizer = build.build_tokenizer(c)
        self.teacher = build.build_teacher(c)
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
        self.g_graphdef, g_params = nnx.split(student, nnx.Param)
        self.d_graphdef, d_params = nnx.split(disc, nnx.Param) if disc is not None else (None, None)
        self.reference_source = {"model": c.model.path or "random_init", "init_from": c.init_from}
        if c.init_from:
            g_params, d_params = self._init_from(c.init_from, g_params, d_params)
        # SPEC.md: the reference is G at the start of the GAD stage (a copy: G's buffers get donated).
        self.ref_params = build.copy_tree(g_params) if self.stage == "gad" else None

        self.g_opt = build.build_optimizer(c.optim_g, self.total_steps)
        self.g_state, self.g_shardings = self._train_state(g_params, self.g_opt)
        if disc is not None:
            self.d_opt = build.build_optimizer(c.optim_d, self.total_steps)
            self.d_state, self.d_shardings = self._train_state(d_params, self.d_opt)
        else:
            self.d_state = None
        self.sampler = (
            Sampler(
                (self.g_graphdef, g_params),
                build.sampling_config(c, self.tokenizer, self.model_config),
                mesh=self.mesh,
            )
            if self.stage != "seqkd"
            else None
        )
        self._programs: dict[str, Any] = {}
        ckpt_dir = c.checkpoint.dir or os.path.join(c.run_dir, "checkpoints")
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
        )
        self.evaluator = None
        self.best_ckpt = None
        if c.eval.every:
            self.evaluator = TrainingEvaluator(c, self.tokenizer, self.mesh, self.primary)
            if c.resume:
                self.evaluator.forget_after(self.start_step)
            if c.select.metric:  # one slot, outside the keep-N rotation; saved rarely, so synchronously
                self.best_ckpt = RunCheckpointer(os.path.join(c.run_dir, "best"), keep=1, async_save=False)
        self.nonfinite = NonFiniteGuard(c.train.max_bad_steps)
        g = c.guards
        self.drift = DriftWatch(g.response_length_max_ratio, g.d_acc_low, g.d_acc_high, g.window)
        self.peak = device_peak_flops(c.peak_flops_per_device)

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
        src = RunCheckpointer(os.path.join(run_dir, "checkpoints"))
        step = src.latest_step()
        templates = {"g_params": g_params}
        meta = src.read_meta(step)
        if d_params is not None and meta.get("has_d") and self.config.disc.from_init_run:
            templates["d_params"] = d_params
        trees, meta = src.restore(step, templates)
        src.close()
        self.reference_source["init_from_step"] = step
        log.info("initialised from %s step %d (stage %s)", run_dir, step, meta.get("stage"))
        return trees["g_params"], trees.get("d_params", d_params)

    def _resume(self) -> None:
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
        if len(states) != jax.process_count():
            raise ValueError(
                f"config.resume: the checkpoint holds data states of {len(states)} processes, this run has "
                f"{jax.process_count()}; resume with the same number of processes"
            )
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
        }
        self.ckpt.save(step, trees, meta, force=force)

    # ---- compiled programs (one per batch shape, cached) --------------------------------------------
    def _program(self, name: str, batch: dict[str, np.ndarray]):
        key = (name,) + tuple((k, v.shape) for k, v in sorted(batch.items()))
        if key not in self._programs:
            c = self.config
            chunk = c.train.logprob_chunk
            if name == "sft":
                fn = make_sft_step(
                    self.g_graphdef, self.g_opt, micro_batches=c.train.micro_batches_g, chunk_size=chunk
                )
                prog = jit_step(fn, self.g_shardings, self.mesh, batch)
            elif name == "disc":
                fn = make_discriminator_step(
                    self.d_graphdef,
                    self.d_opt,
                    n_samples=self.n,
                    loss_type=c.disc.loss,
                    micro_batches=c.train.micro_batches_d,
                    update=not self.d_frozen,
                )
                prog = jit_step(fn, self.d_shardings, self.mesh, batch)
            elif name == "policy":
                loss_cfg = PolicyLossConfig(**c.loss.to_dict())
                fn = make_policy_step(
                    self.g_graphdef,
                    self.g_opt,
                    loss_cfg,
                    micro_batches=c.train.micro_batches_g,
                    chunk_size=chunk,
                    temperature=self.logprob_temperature,
                )
                prog = jit_step(fn, self.g_shardings, self.mesh, batch)
            elif name == "ref_logprobs":
                prog = jit_forward(
                    make_logprob_fn(self.g_graphdef, chunk_size=chunk, temperature=self.logprob_temperature),
                    self.g_shardings.params,
                    self.mesh,
                    batch,
                )
            else:
                raise KeyError(name)
            self._programs[key] = prog
        return self._programs[key]

    def _run(self, name: str, state: Any, batch: dict[str, np.ndarray], rng: jax.Array):
        with use_mesh(self.mesh):
            return self._program(name, batch)(state, shard_batch(batch, self.mesh), rng)

    # ---- one step per stage -------------------------------------------------------------------------
    def _rollout(self, batch: dict[str, np.ndarray], rng: jax.Array, timer: _Timer) -> tuple[Any, dict]:
        with timer("rollout"):
            out = self.sampler.generate(
                batch["prompt_ids"], batch["prompt_mask"], rng, state=self.g_state.params, as_numpy=False
            )
            out.response_ids = build.host_array(out.response_ids)
            out.response_mask = build.host_array(out.response_mask)
            lengths = build.host_array(out.response_lengths)
            truncated = build.host_array(out.truncated)
            logprobs = build.host_array(out.logprobs)
        m = {
            "response_length_mean": float(lengths.mean()),
            "response_length_max": float(lengths.max()),
            "truncation_rate": float(truncated.mean()),
            "rollout_logprob_mean": float(
                (logprobs * out.response_mask).sum() / max(1, out.response_mask.sum())
            ),
            "rollout_decode_steps": out.decode_steps,
            "rollout_tokens": float(lengths.sum()),
        }
        return out, m

    def _disc_step(self, batch: dict[str, np.ndarray], roll: Any, rng: jax.Array, timer: _Timer) -> dict:
        d_batch = {
            "prompt_ids": batch["prompt_ids"],
            "prompt_mask": batch["prompt_mask"],
            "response_ids": batch["response_ids"],
            "response_mask": batch["response_mask"],
            "student_ids": roll.response_ids,
            "student_mask": roll.response_mask,
        }
        with timer("d_step"):
            self.d_state, m = self._run("disc", self.d_state, d_batch, rng)
            m = _block(m)
        return _prefixed(m, "d_")

    def _sft_step(self, batch: dict[str, np.ndarray], rng: jax.Array, timer: _Timer) -> dict:
        sft_batch = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
        with timer("g_step"):
            self.g_state, m = self._run("sft", self.g_state, sft_batch, rng)
            m = _block(m)
        return _prefixed(m, "g_")

    def _policy_step(self, roll: Any, scores: np.ndarray, rng: jax.Array, timer: _Timer) -> dict:
        adv, adv_m = group_advantages(jnp.asarray(scores), self.n)
        pol = {
            "prompt_ids": roll.prompt_ids,
            "prompt_mask": roll.prompt_mask,
            "response_ids": roll.response_ids,
            "response_mask": roll.response_mask,
            "advantages": np.asarray(adv, np.float32),
        }
        with timer("ref"), use_mesh(self.mesh):
            ref = self._program("ref_logprobs", pol)(self.ref_params, shard_batch(pol, self.mesh))
            pol["ref_logprobs"] = build.host_array(ref)
        with timer("g_step"):
            self.g_state, m = self._run("policy", self.g_state, pol, rng)
            m = _block(m)
        out = _prefixed(m, "g_")
        out.update({k: float(v) for k, v in adv_m.items()})
        return out

    def _flops(self, batch: dict[str, np.ndarray], roll: Any, metrics: dict) -> float:
        """Estimated FLOPs of this step (rollout forward + D and G forward/backward + reference)."""
        cfg = self.model_config
        p, r = batch["prompt_ids"].shape[1], batch["response_ids"].shape[1]
        rows = batch["prompt_ids"].shape[0]
        total = 0.0
        if self.stage == "seqkd" or "sft_loss" in metrics:
            total += train_flops(cfg, rows * (p + r), (p + r) // 2)
        if roll is not None:
            rs = roll.response_ids.shape[1]
            gen = float(metrics["rollout_tokens"])
            total += (
                forward_flops_per_token(cfg, p // 2) * rows * p
                + forward_flops_per_token(cfg, p + rs // 2) * gen
            )
            total += train_flops(cfg, rows * (p + r) + rows * self.n * (p + rs), p + max(r, rs) // 2)
        if self.stage == "gad":
            rs = roll.response_ids.shape[1]
            g_tokens = rows * self.n * (p + rs)
            total += (
                train_flops(cfg, g_tokens, (p + rs) // 2)
                + forward_flops_per_token(cfg, (p + rs) // 2) * g_tokens
            )
        return total

    def step(self, step: int) -> dict[str, Any]:
        c = self.config
        timer = _Timer()
        rng = jax.random.fold_in(jax.random.key(self.stream_seed), step)
        k_roll, k_d, k_g = jax.random.split(rng, 3)
        with timer("data"):
            local = next(self.data_iter)
            batch = build.global_host_batch(local, self.data.pad_id, self.config.data.process_sharding)
        metrics: dict[str, Any] = {}
        roll = None
        if self.stage == "seqkd":
            metrics.update(self._sft_step(batch, k_g, timer))
        elif self.stage == "warmup":
            roll, rm = self._rollout(batch, k_roll, timer)
            metrics.update(rm)
            metrics.update(self._disc_step(batch, roll, k_d, timer))
            metrics.pop("student_scores", None)
            if step >= c.train.d_only_steps:
                metrics.update(self._sft_step(batch, k_g, timer))
        else:  # gad
            roll, rm = self._rollout(batch, k_roll, timer)
            metrics.update(rm)
            metrics.update(self._disc_step(batch, roll, k_d, timer))
            scores = metrics.pop("student_scores")  # rewards from the PRE-update D (SPEC.md)
            if self.reward_fn is not None:  # an oracle reward (a control), D only logged
                scores = self.reward_fn(roll.response_ids, roll.response_mask)
                metrics["oracle_reward_mean"] = float(np.mean(scores))
            metrics.update(self._policy_step(roll, scores, k_g, timer))
        metrics.update(timer.times)
        step_time = sum(timer.times.values())
        metrics["time_step_s"] = step_time
        teacher = getattr(self.teacher, "wait_seconds", None)
        if teacher is not None:
            metrics["time_teacher_wait_total_s"] = float(teacher)
        tokens = int(batch["prompt_mask"].sum() + batch["response_mask"].sum())
        if roll is not None:
            tokens += int(metrics["rollout_tokens"])
        metrics["tokens_per_s"] = tokens / max(step_time, 1e-9)
        flops = self._flops(batch, roll, metrics)
        metrics["flops_per_s"] = flops / max(step_time, 1e-9)
        if self.peak:
            metrics["mfu"] = metrics["flops_per_s"] / (self.peak * jax.device_count())
        metrics["epoch"] = self.data_iter.stats.as_dict()["epoch"]
        return metrics

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
                    except SpendingLimitReached:
                        # Step `step` never happened; its batch may be half-read, so no checkpoint here.
                        log.error(
                            "teacher spending limit during step %d; resume continues from checkpoint %s",
                            step + 1,
                            self.ckpt.latest_step(),
                        )
                        raise
                    done = step + 1
                    if self.evaluator is not None and self.evaluator.due(done, self.total_steps):
                        metrics.update(self._evaluate(done))
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
                        os.kill(os.getpid(), signal.SIGKILL)
                    if c.train.debug_signal_at_step and step + 1 == c.train.debug_signal_at_step:
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
            self.ckpt.close()
            if self.best_ckpt is not None:
                self.best_ckpt.close()
            if self.teacher is not None:
                self.teacher.close()
        return last

    def _evaluate(self, steps_done: int) -> dict[str, Any]:
        """eval.* on the current student; a new best (select.*) is saved to <run_dir>/best."""
        t0 = time.perf_counter()
        metrics, new_best = self.evaluator.evaluate(steps_done, self.student_params())
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

    def export_best(self) -> None:
        """HF export of the selected student to export/best (selection.json says which step and why)."""
        from gadjax.models.hf_io import save_hf_checkpoint

        trees, meta = self.best_ckpt.restore(None, {"g_params": self.g_state.params})
        student = nnx.merge(self.g_graphdef, trees["g_params"])
        out = os.path.join(self.config.run_dir, "export", "best")
        save_hf_checkpoint(student, out, tokenizer=self.tokenizer)
        if self.primary:
            log.info("exported the selected student (step %d) to %s", meta["step"], out)

    def student_params(self) -> tuple[Any, Any]:
        """(graphdef, params) of the current student, for evaluation between steps (read-only)."""
        return self.g_graphdef, self.g_state.params

    def export(self) -> None:
        """HF export of the student (and the discriminator when export.discriminator)."""
        from gadjax.models.hf_io import save_hf_checkpoint

        out = os.path.join(self.config.run_dir, "export")
        student = nnx.merge(self.g_graphdef, self.g_state.params)
        save_hf_checkpoint(student, os.path.join(out, "student"), tokenizer=self.tokenizer)
        if self.config.export.discriminator and self.d_state is not None:
            disc = nnx.merge(self.d_graphdef, self.d_state.params)
            save_hf_checkpoint(disc, os.path.join(out, "discriminator"), tokenizer=self.tokenizer)
        if self.primary:
            log.info("exported the student to %s", os.path.join(out, "student"))


def run(config: ConfigDict, on_step: StepHook | None = None) -> dict[str, Any]:
    """Validate `config` and train; returns the last step's metrics record. ``on_step``: Trainer.run."""
    config_lib.validate(config_lib.stage_defaults(config))
    from gadjax.parallel.distributed import initialize_distributed

    d = config.distributed
    initialize_distributed(
        d.coordinator_address or None,
        d.num_processes or None,
        d.process_id if d.process_id >= 0 else None,
    )
    if jax.process_index() == 0:
        os.makedirs(config.run_dir, exist_ok=True)
        with open(os.path.join(config.run_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)
    return Trainer(config).run(on_step)


PROG = "gadjax.train"


def main(argv: list[str] | None = None) -> int:
    """The command line. Config and input errors are one line on stderr and exit status 2 (gadjax.cli);
    on a host without a TPU, libtpu is kept quiet."""
    from gadjax import cli

    cli.quiet_tpu_start()  # jax is imported but its backends have not started yet
    from absl import app, flags
    from ml_collections import config_flags

    cli.register_list_overrides()  # --config.data.train=a.jsonl,b.jsonl or a glob
    config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=False)
    flags.DEFINE_bool(
        "compile_only", False, "Lower + compile the programs for --topology and print the plan."
    )
    flags.DEFINE_string("topology", "", "TPU topology for --compile_only, e.g. v5p-64.")

    def _parse_flags(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as e:  # absl would print two lines and exit 1
            cli.fail(PROG, e)
        except (KeyError, AttributeError) as e:  # ml_collections: an override names no config key
            while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(message))
                e = e.args[0]
            cli.fail(PROG, f"--config.KEY=VALUE: unknown key {e.args[0] if e.args else e}")

    def _main(_argv: list[str]) -> None:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("gadjax").setLevel(logging.INFO)
        cfg = flags.FLAGS.config
        if cfg is None:
            cli.fail(PROG, "--config is required, e.g. --config configs/tiny.py")
        try:
            cfg.get("stage")  # a config file that failed to load raises here (ml_collections defers it)
        except OSError as e:
            path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
            cli.fail(PROG, f"--config: {e}" if os.path.isfile(path) else f"--config: no such file: {path}")
        if flags.FLAGS.compile_only:
            from gadjax import plan

            try:
                plan.main(cfg, flags.FLAGS.topology or None)
            except plan.PlanDoesNotFitError as e:  # the plan's verdict, not a usage error
                print(f"gadjax plan: {cli.one_line(e)}", file=sys.stderr)
                sys.exit(1)
            except plan.PlanError as e:
                cli.fail(PROG, e)
            return
        try:
            run(cfg)
        except Preempted as e:
            print(f"gadjax.train: {e}", file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)
        except SpendingLimitReached as e:
            print(f"gadjax.train: {cli.one_line(e)}", file=sys.stderr)
            sys.exit(SPENDING_LIMIT_EXIT_CODE)

    return cli.run_main(PROG, lambda: app.run(_main, argv=argv or sys.argv, flags_parser=_parse_flags))


if __name__ == "__main__":
    main()
