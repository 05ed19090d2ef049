"""One training step per stage (SPEC.md "Stages") and the compiled programs it runs.

seqkd: SFT of G. warmup: rollout -> D step (-> SFT of G after train.d_only_steps). gad: rollout -> D scores
(pre-update) -> D step -> GRPO advantages -> G policy step (PPO clip + k3 KL to the reference). The jitted
programs (gadjax.algo.steps, sharded by gadjax.parallel.programs) are built once per batch shape. A mixin of
gadjax.trainer.loop.Trainer.

train.packing: the D, G, reference and SFT passes run on packed rows instead (gadjax.data.packing lays them
out on the host, gadjax.algo.packed computes the same losses); the rollout and the rewards are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gadjax.algo.packed import (
    make_packed_discriminator_step,
    make_packed_logprob_fn,
    make_packed_policy_step,
    make_packed_sft_step,
)
from gadjax.algo.steps import (
    PolicyLossConfig,
    group_advantages,
    make_discriminator_step,
    make_logprob_fn,
    make_policy_step,
    make_score_fn,
    make_sft_step,
)
from gadjax.data import packing
from gadjax.parallel.distributed import host_array, per_process
from gadjax.parallel.programs import jit_forward, jit_step, shard_batch
from gadjax.parallel.rules import use_mesh
from gadjax.teacher.errors import (
    SpendingLimitReached,
    SpendingLimitReachedElsewhere,
    TeacherError,
    TeacherFailedElsewhere,
    TooManyFailedPrompts,
)
from gadjax.trainer import build
from gadjax.trainer.flops import forward_flops_per_token, train_flops

log = logging.getLogger("gadjax.train")


# What stopped this host's batch, as the hosts tell each other (see _next_local_batch).
_OUTCOME = {
    SpendingLimitReached: 1,
    SpendingLimitReachedElsewhere: 1,
    TooManyFailedPrompts: 2,
}


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


def _pack_metrics(prefix: str, layout: packing.Packing) -> dict[str, float]:
    """How full the packed micro-batches were: micro-batches run, real tokens / tokens computed."""
    real = float(np.sum(layout.prompt_len + layout.response_len))
    computed = layout.used * layout.shape.rows * layout.shape.length
    return {f"{prefix}_pack_micro_batches": float(layout.used), f"{prefix}_pack_fill": real / computed}


class StageStepsMixin:
    """The per-stage step of a Trainer and its program cache."""

    # ---- compiled programs (one per batch shape, cached) --------------------------------------------
    def _program(self, name: str, batch: dict[str, np.ndarray], horizon: float = 0.0):
        key = (name, horizon) + tuple((k, v.shape) for k, v in sorted(batch.items()))
        if name.endswith("_packed"):
            if key not in self._programs:
                self._programs[key] = self._packed_program(name, batch, horizon)
            return self._programs[key]
        if key not in self._programs:
            c = self.config
            chunk = c.train.logprob_chunk
            g_base = self.g_parts.base_shardings  # LoRA: the frozen base is a step argument
            if name == "sft":
                fn = make_sft_step(
                    self.g_graphdef, self.g_opt, micro_batches=c.train.micro_batches_g, chunk_size=chunk
                )
                prog = jit_step(fn, self.g_shardings, self.mesh, batch, frozen_shardings=g_base)
            elif name == "disc":
                fn = make_discriminator_step(
                    self.d_graphdef,
                    self.d_opt,
                    n_samples=self.n,
                    loss_type=c.disc.loss,
                    micro_batches=c.train.micro_batches_d,
                    update=not self.d_frozen,
                )
                prog = jit_step(
                    fn, self.d_shardings, self.mesh, batch, frozen_shardings=self.d_parts.base_shardings
                )
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
                prog = jit_step(fn, self.g_shardings, self.mesh, batch, frozen_shardings=g_base)
            elif name == "disc_score":  # D's forward only: validation pairs (gadjax.trainer.disc_validation)
                d_base = self.d_parts.base_shardings
                prog = jit_forward(
                    make_score_fn(self.d_graphdef),
                    self.d_shardings.params if d_base is None else (self.d_shardings.params, d_base),
                    self.mesh,
                    batch,
                )
            elif name == "ref_logprobs":
                prog = jit_forward(
                    make_logprob_fn(self.g_graphdef, chunk_size=chunk, temperature=self.logprob_temperature),
                    self.g_shardings.params if g_base is None else (self.g_shardings.params, g_base),
                    self.mesh,
                    batch,
                )
            else:
                raise KeyError(name)
            self._programs[key] = prog
        return self._programs[key]

    def _packed_program(self, name: str, batch: dict[str, np.ndarray], horizon: float):
        """The packed passes (gadjax.algo.packed): batches are [micro-batches, rows, pack_length]."""
        c = self.config
        chunk, temp = c.train.logprob_chunk, self.logprob_temperature
        g_base = self.g_parts.base_shardings
        if name == "sft_packed":
            fn = make_packed_sft_step(self.g_graphdef, self.g_opt, chunk_size=chunk)
            return jit_step(fn, self.g_shardings, self.mesh, batch, frozen_shardings=g_base, row_axis=1)
        if name == "disc_packed":
            fn = make_packed_discriminator_step(
                self.d_graphdef, self.d_opt, n_samples=self.n, loss_type=c.disc.loss, update=not self.d_frozen
            )
            d_base = self.d_parts.base_shardings
            return jit_step(fn, self.d_shardings, self.mesh, batch, frozen_shardings=d_base, row_axis=1)
        if name == "policy_packed":
            loss_cfg = PolicyLossConfig(**c.loss.to_dict())
            fn = make_packed_policy_step(
                self.g_graphdef, self.g_opt, loss_cfg, horizon=horizon, chunk_size=chunk, temperature=temp
            )
            return jit_step(fn, self.g_shardings, self.mesh, batch, frozen_shardings=g_base, row_axis=1)
        if name == "ref_packed":
            params = self.g_shardings.params if g_base is None else (self.g_shardings.params, g_base)
            fn = make_packed_logprob_fn(self.g_graphdef, chunk_size=chunk, temperature=temp)
            return jit_forward(fn, params, self.mesh, batch, row_axis=1)
        raise KeyError(name)

    def disc_scores(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """D(x, y) [rows] of a padded batch under the current D, no update: the score of the D step
        (sequence_scores at the last valid token), run on the padded layout whatever train.packing says
        (a few eval rows; the packed step computes the same scores)."""
        with use_mesh(self.mesh):
            params = self.d_parts.step_inputs(self.d_state.params)  # LoRA: (adapters + head, base)
            return host_array(self._program("disc_score", batch)(params, shard_batch(batch, self.mesh)))

    def _pack_shape(self, kind: str) -> packing.PackShape:
        return packing.pack_shape(self.config, kind, self.mesh.shape["data"] * self.mesh.shape["fsdp"])

    def _run(self, name: str, state: Any, batch: dict[str, np.ndarray], rng: jax.Array, horizon: float = 0.0):
        base = (self.d_parts if name.startswith("disc") else self.g_parts).base
        row_axis = 1 if name.endswith("_packed") else 0
        with use_mesh(self.mesh):
            args = (state, shard_batch(batch, self.mesh, row_axis=row_axis), rng)
            return self._program(name, batch, horizon)(*args, *(() if base is None else (base,)))

    # ---- one step per stage -------------------------------------------------------------------------
    def _rollout(self, batch: dict[str, np.ndarray], rng: jax.Array, timer: _Timer) -> tuple[Any, dict]:
        with timer("rollout"):
            weights = self.g_parts.full_params(self.g_state.params)  # LoRA: merged once per rollout
            out = self.sampler.generate(
                batch["prompt_ids"], batch["prompt_mask"], rng, state=weights, as_numpy=False
            )
            del weights
            out.response_ids = host_array(out.response_ids)
            out.response_mask = host_array(out.response_mask)
            lengths = host_array(out.response_lengths)
            truncated = host_array(out.truncated)
            logprobs = host_array(out.logprobs)
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
        """train.d_updates D updates on this step's pairs. The metrics (and the student scores that are G's
        rewards) are the first update's, computed before any update; ``d_loss_last`` is the last one's."""
        d_batch = {
            "prompt_ids": batch["prompt_ids"],
            "prompt_mask": batch["prompt_mask"],
            "response_ids": batch["response_ids"],
            "response_mask": batch["response_mask"],
            "student_ids": roll.response_ids,
            "student_mask": roll.response_mask,
        }
        updates = int(self.config.train.d_updates)
        with timer("d_step"):
            if self.config.train.packing:
                layout, run_batch = packing.pack_discriminator(
                    *d_batch.values(), self.n, self._pack_shape("disc")
                )
                name = "disc_packed"
            else:
                layout, run_batch, name = None, d_batch, "disc"
            for i in range(updates):  # update 0 keeps rng itself: d_updates=1 is the single update it was
                self.d_state, m_i = self._run(
                    name, self.d_state, run_batch, rng if i == 0 else jax.random.fold_in(rng, i)
                )
                m_i = _block(m_i)
                if i == 0:
                    m = m_i
            if updates > 1:
                m["d_loss_last"] = m_i["loss"]
        if layout is None:
            return _prefixed(m, "d_")
        m["student_scores"] = packing.student_scores(layout, m.pop("row_scores"))
        return _prefixed({**m, **_pack_metrics("d", layout)}, "d_")

    def _sft_step(self, batch: dict[str, np.ndarray], rng: jax.Array, timer: _Timer) -> dict:
        sft_batch = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
        with timer("g_step"):
            if not self.config.train.packing:
                self.g_state, m = self._run("sft", self.g_state, sft_batch, rng)
                return _prefixed(_block(m), "g_")
            layout, packed = packing.pack_padded(*sft_batch.values(), self._pack_shape("sft"))
            self.g_state, m = self._run("sft_packed", self.g_state, packed, rng)
            m = _block(m)
        return _prefixed({**m, **_pack_metrics("g", layout)}, "g_")

    def _policy_step(self, roll: Any, scores: np.ndarray, rng: jax.Array, timer: _Timer) -> dict:
        adv, adv_m = group_advantages(jnp.asarray(scores), self.n, bool(self.config.reward.norm_by_std))
        pol = {
            "prompt_ids": roll.prompt_ids,
            "prompt_mask": roll.prompt_mask,
            "response_ids": roll.response_ids,
            "response_mask": roll.response_mask,
            "advantages": np.asarray(adv, np.float32),
        }
        if self.config.train.packing:
            return self._packed_policy_step(pol, adv_m, rng, timer)
        with timer("ref"), use_mesh(self.mesh):
            ref_in = self.g_parts.step_inputs(self.ref_params)  # LoRA: (warmup adapters, G's base)
            ref = self._program("ref_logprobs", pol)(ref_in, shard_batch(pol, self.mesh))
            pol["ref_logprobs"] = host_array(ref)
        with timer("g_step"):
            self.g_state, m = self._run("policy", self.g_state, pol, rng)
            m = _block(m)
        out = _prefixed(m, "g_")
        out.update({k: float(v) for k, v in adv_m.items()})
        return out

    def _packed_policy_step(self, pol: dict, adv_m: dict, rng: jax.Array, timer: _Timer) -> dict:
        """The reference pass and the G step on packed rows (the padded response width is the horizon of
        the seq-mean-token-sum-norm mode, as in the padded step)."""
        with timer("ref"):
            rows = (pol[k] for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask"))
            layout, packed = packing.pack_padded(*rows, self._pack_shape("policy"))
            with use_mesh(self.mesh):
                ref_in = self.g_parts.step_inputs(self.ref_params)  # LoRA: (warmup adapters, G's base)
                prog = self._program("ref_packed", packed)
                ref = host_array(prog(ref_in, shard_batch(packed, self.mesh, row_axis=1)))
        packed.update(advantages=layout.spread_rows(pol["advantages"]), ref_logprobs=ref)
        with timer("g_step"):
            horizon = float(pol["response_ids"].shape[1])
            self.g_state, m = self._run("policy_packed", self.g_state, packed, rng, horizon)
            m = _block(m)
        out = _prefixed({**m, **_pack_metrics("g", layout)}, "g_")
        out.update({k: float(v) for k, v in adv_m.items()})
        return out

    def _computed(
        self, prefix: str, kind: str, tokens: int, context: int, metrics: dict
    ) -> tuple[float, int]:
        """(tokens, mean attention context) a train pass computes: its padded rows, or with train.packing
        the packed micro-batches it ran (a packed sequence attends causally over its whole length)."""
        runs = metrics.get(f"{prefix}_pack_micro_batches")
        if runs is None:
            return tokens, context
        shape = self._pack_shape(kind)
        return float(runs) * shape.rows * shape.length, shape.length // 2

    def _flops(self, batch: dict[str, np.ndarray], roll: Any, metrics: dict) -> float:
        """Estimated FLOPs of this step (rollout forward + D and G forward/backward + reference)."""
        cfg = self.model_config
        p, r = batch["prompt_ids"].shape[1], batch["response_ids"].shape[1]
        rows = batch["prompt_ids"].shape[0]
        total = 0.0
        if self.stage == "seqkd" or "sft_loss" in metrics:
            total += train_flops(cfg, *self._computed("g", "sft", rows * (p + r), (p + r) // 2, metrics))
        if roll is not None:
            rs = roll.response_ids.shape[1]
            gen = float(metrics["rollout_tokens"])
            total += (
                forward_flops_per_token(cfg, p // 2) * rows * p
                + forward_flops_per_token(cfg, p + rs // 2) * gen
            )
            d_tokens = rows * (p + r) + rows * self.n * (p + rs)
            d_pass = train_flops(cfg, *self._computed("d", "disc", d_tokens, p + max(r, rs) // 2, metrics))
            total += d_pass * int(self.config.train.d_updates)  # each D update is a forward + backward
        if self.stage == "gad":
            rs = roll.response_ids.shape[1]
            g_tokens, ctx = self._computed("g", "policy", rows * self.n * (p + rs), (p + rs) // 2, metrics)
            total += train_flops(cfg, g_tokens, ctx) + forward_flops_per_token(cfg, ctx) * g_tokens
        return total

    def _next_local_batch(self) -> Any:
        """This host's next batch. With an online teacher on several hosts, the hosts first agree (one
        allgather of (outcome, prompts skipped)) before any collective that a stopped host would leave the
        others waiting in forever: a host stopped by its spending limit stops all of them at this step;
        and the prompts the teacher did not answer, skipped on each host, are summed, so past
        teacher.max_failed_prompts every host raises TooManyFailedPrompts at this same step. A host that
        did get its batch then unreads it, so the checkpoint saved next reads it again on resume."""
        try:
            local, failure = next(self.data_iter), None
        except (TeacherError, TooManyFailedPrompts) as e:  # SpendingLimitReached is a TeacherError
            local, failure = None, e
        if self.teacher is None:
            if failure is not None:
                raise failure
            return local
        # outcome: 0 = got a batch, 1 = spending limit, 2 = failure limit (this host alone went past it),
        # 3 = the endpoint failed (HTTP 401 / 404, no key: nothing to skip)
        code = 0 if failure is None else _OUTCOME[type(failure)] if type(failure) in _OUTCOME else 3
        multi = jax.process_count() > 1
        both = per_process([code, self.data_iter.teacher_failed]) if multi else None
        codes = both[:, 0] if multi else np.asarray([code])
        counts = both[:, 1] if multi else np.asarray([self.data_iter.teacher_failed])
        self.teacher_failed = total = int(counts.sum())
        limit = self.config.teacher.max_failed_prompts
        if not isinstance(failure, TeacherError):  # this host's own teacher error is raised as itself
            if (codes == 1).any():  # a spending limit elsewhere keeps its own exit status
                failure = SpendingLimitReachedElsewhere([int(i) for i in np.flatnonzero(codes == 1)])
            elif (codes == 3).any():
                failure = TeacherFailedElsewhere([int(i) for i in np.flatnonzero(codes == 3)])
            elif (codes == 2).any() or 0 <= limit < total:
                hosts = [int(i) for i in np.flatnonzero(counts)] if multi else None
                failure = TooManyFailedPrompts(total, limit, hosts)
        if failure is not None:
            if local is not None:
                self.data_iter.unread_last_batch()
            raise failure
        return local

    def step(self, step: int) -> dict[str, Any]:
        c = self.config
        timer = _Timer()
        rng = jax.random.fold_in(jax.random.key(self.stream_seed), step)
        k_roll, k_d, k_g = jax.random.split(rng, 3)
        with timer("data"):
            local = self._next_local_batch()
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
            metrics["teacher_failed_prompts"] = self.teacher_failed  # all hosts, skipped so far
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
