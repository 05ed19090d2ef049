"""The study: ``python -m gadjax.study [--out runs/study] [--budget full|ci]`` (`make study`).

The paper's claims in miniature, on the demo's embedded teacher (SmolLM2-135M-Instruct behind a hidden
French persona, configs/study.py), with a fair protocol:

 1. teacher corpus   the demo's (gadjax.demo.teacher.collect_teacher: cached, black box); every k-th
                     training prompt is held back as the VALIDATION split, used for the curves and for
                     choosing settings; the held-out split is only used for the final table.
 2. main arms        per seed: GAD = warmup (D-only steps, then SFT + D) -> gad; seqkd = SFT from the same
                     start with as many generator updates. Teacher-likeness (gadjax.demo.likeness: marker
                     gap and C2ST, both sides sampled at the teacher's temperature) is measured on the
                     validation split every `eval_every` generator updates, through a Trainer hook that
                     draws no randomness from the training streams.
 3. ablations        from the same warmup run: frozen D (a fixed reward model) vs on-policy GAD, both with
                     room to drift (longer responses); no discriminator warmup (fresh D); a Bradley-Terry
                     vs binary cross-entropy D loss (its own warmup); an oracle reward (the persona marker
                     count instead of D).
 4. final table      every final model on the held-out split, plus "before", each warmup, and a second
                     teacher sample ("teacher resample": the calibration row, C2ST ~0.5 by construction).
 5. report           <out>/study.md with tables (mean +- standard error over seeds) and PNG plots
                     (gadjax.study.report).

Every finished run is recorded in <out>/results.jsonl; a second invocation skips what is done (a run
interrupted midway is redone from its start), so the study can be resumed after a crash.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from gadjax.demo.settings import read_rows, seqkd_eval_start, write_rows, write_validation_split
from gadjax.demo.stages import set_config_value, stage_config
from gadjax.demo.timing import PhaseTimer, say
from gadjax.study.results import Results, split_validation

__all__ = ["Results", "Study", "split_validation"]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "study.py")

log = logging.getLogger("gadjax.study")


def _release_compiled_programs() -> None:
    """Drop the finished run's compiled programs: jax keeps every executable it compiled, and a study
    compiles a Trainer's worth per run (the issue-27 study grew to 10.7 GB by seed 4 and was OOM-killed)."""
    import gc

    import jax

    gc.collect()
    jax.clear_caches()


# ---------------------------------------------------------------------------------------------- study
class Study:
    """Runs the arms of configs/study.py and records their curves and final evaluations."""

    def __init__(self, c: Any, out: str, results: Results, timer: PhaseTimer):
        self.c, self.s, self.out, self.results, self.timer = c, c.study, out, results, timer
        self.tokenizer = None
        self.val: list[dict] = []
        self.heldout: list[dict] = []
        self.d_only = int(c.train.d_only_steps)
        self.teacher_length: float | None = None  # mean teacher response tokens on validation
        self._selectors: dict[str, Any] = {}  # run -> (Selector, selected student params)
        # The teacher's responses per prompt of each split (eval_samples of them; see teacher_samples).
        self.teacher_val: list[list[str]] | None = None
        self.teacher_heldout: list[list[str]] | None = None

    # ---- data ----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        from gadjax.models.tokenizer import load_tokenizer

        data = os.path.join(self.out, "data")
        fit_path, _, fit, val = write_validation_split(
            os.path.join(data, "train.jsonl"), data, int(self.s.validation_every), int(self.s.validation_max)
        )
        heldout = read_rows(os.path.join(data, "heldout.jsonl"))
        if self.s.heldout_max:
            heldout = heldout[: int(self.s.heldout_max)]
        self.val, self.heldout = val, heldout
        self.c.data.train = [fit_path]
        self.tokenizer = load_tokenizer(self.c.model.path)
        # +1: the student's length counts its EOS; a truncated teacher response has none, but every
        # response that ended did, so this is the like-for-like reference for the length band.
        lengths = [
            len(self.tokenizer.encode(r["response"], add_special_tokens=False))
            + (r.get("finish_reason") != "length")
            for r in val
        ]
        self.teacher_length = sum(lengths) / max(1, len(lengths))
        if int(self.s.get("eval_samples", 1)) > 1:
            self.teacher_val = self.teacher_samples("validation", val)
            self.teacher_heldout = self.teacher_samples("heldout", heldout)
        say(
            f"splits: {len(fit)} training prompts, {len(val)} validation, {len(heldout)} held-out; "
            f"teacher mean response length on validation {self.teacher_length:.1f} tokens"
        )

    def teacher_samples(self, split: str, rows: Sequence[dict]) -> list[list[str]]:
        """``eval_samples`` teacher responses per row: the collected one (the black-box corpus) and more
        draws of the same teacher (the embedded model behind its hidden prompt, same temperature and max
        tokens) sampled here with keys of their own (eval_seed + 1000 + j: never a student's, nor the
        calibration row's). Cached in <out>/data/teacher_samples_<split>.jsonl: drawn once per study."""
        from gadjax.demo.likeness import TEACHER_PROMPT_TOKENS, sample_responses, teacher_resample_rows

        k = int(self.s.eval_samples)
        path = os.path.join(self.out, "data", f"teacher_samples_{split}.jsonl")
        want = [r["response"] for r in rows]
        if os.path.exists(path):
            cached = [r["responses"] for r in read_rows(path)]
            if len(cached) == len(rows) and all(
                len(c) == k and c[0] == w for c, w in zip(cached, want, strict=True)
            ):
                return cached
        from gadjax.models.hf_io import load_decoder

        d = self.c.demo
        with self.timer(f"teacher samples {split}"):
            teacher = load_decoder(self.c.model.path)
            persona = teacher_resample_rows(rows)
            args = (float(d.teacher_temperature), int(d.teacher_max_tokens), TEACHER_PROMPT_TOKENS)
            draws = [
                sample_responses(teacher, self.tokenizer, persona, *args, int(self.s.eval_batch_size), seed)
                for seed in range(int(self.s.eval_seed) + 1001, int(self.s.eval_seed) + 1000 + k)
            ]
            del teacher
        out = [[w] + [dr["generations"][i]["student_response"] for dr in draws] for i, w in enumerate(want)]
        write_rows(
            path, [{"prompt_id": r.get("prompt_id"), "responses": o} for r, o in zip(rows, out, strict=True)]
        )
        say(f"teacher samples ({split}): {k} per prompt ({k - 1} drawn here besides the collected one)")
        return out

    # ---- evaluation ----------------------------------------------------------------------------
    def likeness(
        self,
        model: Any,
        rows: Sequence[dict],
        max_tokens: int | None = None,
        max_prompt: int | None = None,
        teacher: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Teacher-likeness of ``model`` on ``rows`` (eval_samples per prompt; ``teacher``: the teacher's
        responses per row, default the collected one)."""
        from gadjax.demo.likeness import likeness_eval

        d = self.c.demo
        return likeness_eval(
            model,
            self.tokenizer,
            rows,
            temperature=float(d.teacher_temperature),
            max_new_tokens=int(max_tokens or d.teacher_max_tokens),
            max_prompt_tokens=int(max_prompt or self.c.data.max_prompt_tokens),
            batch_size=int(self.s.eval_batch_size),
            seed=int(self.s.eval_seed),
            folds=int(self.s.c2st_folds),
            samples=int(self.s.get("eval_samples", 1)),
            teacher_texts=teacher,
        )

    def final(
        self,
        name: str,
        model_path: str | None,
        rows_fn: Any = None,
        max_prompt: int | None = None,
        *,
        model: Any = None,
        **meta: Any,
    ) -> None:
        """Held-out teacher-likeness of one model (a run's export, the base model, or ``model``: weights
        in memory, such as the checkpoint selected on validation)."""
        if self.results.final_done(name):
            return
        from gadjax.models.hf_io import load_decoder

        with self.timer(f"final {name}"):
            if model is None:
                model = load_decoder(model_path or self.c.model.path)
            rows = rows_fn(self.heldout) if rows_fn else self.heldout
            res = self.likeness(model, rows, meta.get("max_tokens"), max_prompt, self.teacher_heldout)
            res.pop("generations", None)
            del model
        say(
            f"held-out {name}: marker gap {res['marker_gap']:+.3f} (se {res['marker_gap_se']:.3f}), "
            f"C2ST {res['c2st_accuracy']:.3f} (se {res['c2st_se']:.3f}), length {res['length_mean']:.1f}"
        )
        self.results.add({"kind": "final", "name": name, **meta, **res})

    # ---- training ------------------------------------------------------------------------------
    def _selector(self) -> Any:
        from gadjax.eval.selection import Selector

        band = tuple(self.s.select_length_band) if self.s.select_length_band else None
        return Selector(
            metric=str(self.s.select_metric),
            mode="min",
            tiebreak=tuple(self.s.select_tiebreak),
            length_band=band,
            reference_length=self.teacher_length if band else None,
        )

    def _hook(
        self,
        run: str,
        meta: dict[str, Any],
        offset: int,
        d_only: int,
        total: int,
        max_tokens: int,
        select: bool,
        start: int = 0,
    ):
        """Trainer hook: teacher-likeness on the validation split every eval_every generator updates (from
        update ``start`` on; and the last step), with D's accuracy on the first draw's (teacher, student)
        pairs where the run has a D; with ``select``, the best in-band evaluation's student weights are kept
        (the paper's checkpoint selection, on validation)."""
        import jax
        import jax.numpy as jnp

        every = int(self.s.eval_every)
        if select:
            self._selectors[run] = [self._selector(), None]

        def on_step(steps_done: int, trainer: Any) -> None:
            updates = offset + max(0, steps_done - d_only)
            own = updates - offset
            last = steps_done == total
            if own <= 0 or (not last and (updates % every or updates < start)):
                return
            t0 = time.perf_counter()
            res = self.likeness(trainer.student_params(), self.val, max_tokens, teacher=self.teacher_val)
            res.pop("examples", None)
            generations = res.pop("generations", None)
            if generations is not None and trainer.d_state is not None:
                from gadjax.trainer.disc_validation import disc_validation

                res.update(
                    disc_validation(
                        trainer.config, trainer.tokenizer, trainer.mesh, generations,
                        trainer.disc_scores, int(self.s.eval_batch_size),
                    )
                )  # fmt: skip
            self.results.add(
                {"kind": "curve", "run": run, **meta, "step": steps_done, "updates": updates, **res}
            )
            log.info("%s updates %d: eval %.1f s", run, updates, time.perf_counter() - t0)
            if select and self._selectors[run][0].consider(updates, res):
                graphdef, params = trainer.student_params()
                # A copy: the train step donates its state buffers.
                self._selectors[run][1] = (graphdef, jax.tree.map(jnp.copy, params))

        return on_step

    def train(
        self,
        run: str,
        stage: str,
        steps: int,
        lr: float,
        seed: int,
        *,
        meta: dict[str, Any],
        offset: int = 0,
        init_from: str = "",
        overrides: dict[str, Any] | None = None,
        select: bool = False,
        eval_start: int = 0,
    ) -> str:
        """One gadjax.train run with the eval hook; returns its run_dir. Skipped when already done.
        ``eval_start``: the first generator update evaluated (the hook's ``start``). ``select``: also
        evaluate, on the held-out split, the checkpoint selected on validation
        (final record ``<arm>_sel_s<seed>``) before the run counts as done."""
        from gadjax import train

        run_dir = os.path.join(self.out, "runs", run)
        if self.results.run_done(run):
            return run_dir
        d_lr = float(self.s.gad_d_lr) if stage == "gad" else None  # D's lr of the gad stage (settings.py)
        c = stage_config(self.c, stage, run_dir, steps, lr, init_from=init_from, d_lr=d_lr)
        c.seed = int(seed)
        for key, value in (overrides or {}).items():
            set_config_value(c, key, value)
        if "study" in c:
            del c["study"]
        d_only = self.d_only if stage == "warmup" else 0
        max_tokens = int(c.rollout.max_new_tokens)
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)  # an interrupted earlier attempt
        with self.timer(run):
            hook = self._hook(run, meta, offset, d_only, steps, max_tokens, select, eval_start)
            train.run(c, on_step=hook)
            _release_compiled_programs()
        if select:
            self._final_selected(run, meta)
        self.results.add({"kind": "run", "run": run, **meta, "stage": stage, "steps": steps, "lr": lr})
        return run_dir

    def _final_selected(self, run: str, meta: dict[str, Any]) -> None:
        selector, model = self._selectors.pop(run)
        summary = selector.summary()
        name = f"{meta['arm']}_sel_s{meta['seed']}"
        if model is None:  # every evaluation out of band: nothing to report, and the report says so
            self.results.add({"kind": "selection", "run": run, "name": name, **meta, **summary})
            say(f"{run}: no in-band evaluation to select ({summary})")
            return
        say(f"{run}: selected on validation at {summary['selected_step']} generator updates")
        # Tagged with the run: an interrupted run's selected evaluation is dropped and redone with it.
        self.final(
            name, None, model=model, arm=f"{meta['arm']}_sel", seed=meta["seed"], run=run, selection=summary
        )

    # ---- the arms ------------------------------------------------------------------------------
    def budget(self) -> tuple[int, int, int]:
        """(warmup steps, gad steps, generator updates of either arm)."""
        w, g = int(self.s.warmup_steps), int(self.s.gad_steps)
        return w, g, w - self.d_only + g

    def main_arms(self, seed: int) -> str:
        """GAD (warmup -> gad) and seqkd for one seed; returns the warmup run_dir (the ablations' start)."""
        w, g, updates = self.budget()
        s = self.s
        warm = self.train(
            f"warmup_s{seed}", "warmup", w, float(self.c.optim_g.lr), seed,
            meta={"arm": "gad", "seed": seed, "stage": "warmup"},
        )  # fmt: skip
        self.train(
            f"gad_s{seed}", "gad", g, float(s.gad_lr), seed, init_from=warm, offset=w - self.d_only,
            meta={"arm": "gad", "seed": seed, "stage": "gad"}, select=bool(s.select_metric),
        )  # fmt: skip
        self.train(
            f"seqkd_s{seed}", "seqkd", updates, float(s.seqkd_lr), seed,
            meta={"arm": "seqkd", "seed": seed, "stage": "seqkd"}, select=bool(s.select_metric),
            eval_start=seqkd_eval_start(w, self.d_only),
        )  # fmt: skip
        for name in (f"warmup_s{seed}", f"gad_s{seed}", f"seqkd_s{seed}"):
            arm = name.rsplit("_", 1)[0]
            if not self._reuse_selected(name, arm, seed, updates):
                self.final(name, self._export(name), arm=arm, seed=seed)
        return warm

    def _reuse_selected(self, name: str, arm: str, seed: int, last_update: int) -> bool:
        """When the checkpoint selected on validation is the run's last step, its held-out record is the
        last step's as well (the same weights): record it under ``name`` instead of evaluating them again."""
        if self.results.final_done(name):
            return True
        sel = next(
            (r for r in self.results.records if r["kind"] == "final" and r["name"] == f"{arm}_sel_s{seed}"),
            None,
        )
        if sel is None or sel["selection"].get("selected_step") != last_update:
            return False
        same = {k: v for k, v in sel.items() if k not in ("name", "arm", "run", "selection")}
        self.results.add({**same, "name": name, "arm": arm, "seed": seed, "same_as": sel["name"]})
        say(f"held-out {name}: the selected checkpoint is the last step's ({sel['name']}'s evaluation)")
        return True

    def ablations(self, seed: int, warm: str) -> None:
        from gadjax.demo.persona import ENGLISH_REGEX, MARKER_REGEX

        w, _, _ = self.budget()
        s, off = self.s, w - self.d_only
        g = int(s.ablation_gad_steps)
        long = {"rollout.max_new_tokens": int(s.long_max_tokens)}
        arms: dict[str, dict[str, Any]] = {
            "frozen_d": {**long, "disc.frozen": True},
            "on_policy_long": long,
            "no_d_warmup": {"disc.from_init_run": False},
            "oracle": {
                "reward.kind": "regex",
                "reward.pattern": MARKER_REGEX.pattern,
                "reward.negative_pattern": ENGLISH_REGEX.pattern,
            },
        }
        for name in s.ablations:
            start = warm
            over = dict(arms.get(name, {}))
            if name == "bce":
                start = self.train(
                    f"warmup_bce_s{seed}", "warmup", w, float(self.c.optim_g.lr), seed,
                    meta={"arm": "bce", "seed": seed, "stage": "warmup"}, overrides={"disc.loss": "bce"},
                )  # fmt: skip
                over = {"disc.loss": "bce"}
            elif name not in arms:
                raise ValueError(f"study.ablations: unknown ablation {name!r}")
            run = f"{name}_s{seed}"
            self.train(
                run, "gad", g, float(s.gad_lr), seed, init_from=start, offset=off, overrides=over,
                meta={"arm": name, "seed": seed, "stage": "gad"},
            )  # fmt: skip
            max_tokens = over.get("rollout.max_new_tokens")
            self.final(run, self._export(run), arm=name, seed=seed, max_tokens=max_tokens)

    def _export(self, run: str) -> str:
        return os.path.join(self.out, "runs", run, "export", "student")
