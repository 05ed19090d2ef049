"""Evaluation during training and checkpoint selection (config keys ``eval.*`` and ``select.*``).

SPEC.md: the paper evaluates every 50 steps and keeps the checkpoint with the best judge score whose mean
response length stays within an accepted band; the reward oscillates around 0 by design, so the last step
is not the one to ship. Every ``eval.every`` steps the student is evaluated on ``eval.data`` with
gadjax.evaluate's metrics (gadjax.eval.runner.evaluate_model: the trainer's mesh, greedy by default), the
flat summary is logged under ``eval/`` with the step's training metrics, and the generations are written to
``<run_dir>/eval/step_<N>.jsonl``. Evaluation draws its randomness from ``eval.seed`` only, never from the
training streams: a run with evaluation on trains bitwise like one with it off.

Selection (``select.metric``, gadjax.eval.selection.Selector): the best in-band evaluation's student is
saved to ``<run_dir>/best`` (its own one-slot orbax directory, outside the keep-N rotation), exported to
``export/best`` at the end, and explained in ``<run_dir>/selection.json`` (which step, its value, which
evaluations were out of band). The selection state is in selection.json, so it survives a resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from ml_collections import ConfigDict

from gadjax import paths
from gadjax.eval.selection import Selector
from gadjax.run_dir import RunDir

log = logging.getLogger(__name__)

LENGTH_REFERENCES = ("teacher", "first")
JUDGE_SUMMARY_KEYS = ("judge_score", "judge_n_ok", "judge_n_failed")
JUDGE_CACHE = "judge_cache.sqlite"  # in the run dir, unless eval.judge.cache_path says otherwise


def validate(c: ConfigDict, fail: Any) -> None:
    """Check eval.* / select.* (``fail(key, message)`` raises)."""
    e, s = c.eval, c.select
    if not isinstance(e.every, int) or e.every < 0:
        fail("eval.every", f"must be an integer >= 0 (got {e.every!r}; 0 = off)")
    if e.every and not e.data:
        fail("eval.data", "eval.every > 0 needs evaluation rows (a held-out jsonl / parquet / tfds dir)")
    for path in e.data:
        if not paths.exists(path):
            fail("eval.data", f"{path!r} does not exist")
    if not isinstance(e.start_step, int) or e.start_step < 0:
        fail("eval.start_step", f"must be an integer >= 0 (got {e.start_step!r}; 0 = from the first step)")
    if e.temperature < 0:
        fail("eval.temperature", "must be >= 0 (0 = greedy)")
    if not isinstance(e.judge_every, int) or e.judge_every < 0:
        fail("eval.judge_every", f"must be an integer >= 0 (got {e.judge_every!r}; 0 = never)")
    if e.judge_every and (not e.every or e.judge_every % e.every):
        fail("eval.judge_every", f"{e.judge_every} must be a multiple of eval.every ({e.every})")
    if e.judge_every and not (e.judge.base_url and e.judge.model):
        fail("eval.judge", "eval.judge_every > 0 needs eval.judge.base_url and eval.judge.model")
    if str(s.metric).startswith("judge_") and not e.judge_every:
        fail("select.metric", f"{s.metric!r} needs the judge: set eval.judge_every > 0")
    if s.metric and not e.every:
        fail("select.metric", "selection needs evaluations: set eval.every > 0")
    if s.mode not in ("min", "max"):
        fail("select.mode", f"{s.mode!r} is not 'min' or 'max'")
    band = tuple(s.length_band)
    if band and (len(band) != 2 or not 0 <= band[0] <= band[1]):
        fail("select.length_band", f"{band} must be () or (low, high) with 0 <= low <= high")
    if s.length_reference not in LENGTH_REFERENCES:
        fail("select.length_reference", f"{s.length_reference!r} is not one of {LENGTH_REFERENCES}")


def evaluation_due(steps_done: int, total_steps: int, every: int, start_step: int = 0) -> bool:
    """Whether step ``steps_done`` is evaluated: at the multiples of ``every`` from ``start_step`` on, and
    at the last step; never with ``every`` = 0."""
    if every <= 0:
        return False
    return steps_done == total_steps or (steps_done >= start_step and steps_done % every == 0)


def _judge_settings(c: ConfigDict) -> Any:
    """eval.judge.* as JudgeSettings (the config keys are its fields; "" means None)."""
    from gadjax.eval.judge import JudgeSettings

    kw = {f.name: c.eval.judge[f.name] for f in dataclasses.fields(JudgeSettings)}
    kw["api_key_env"] = kw["api_key_env"] or None
    if not kw["cache_path"]:  # SQLite needs a real filesystem: with a gs:// run_dir it lives on this host
        run_dir = RunDir(c.run_dir)
        run_dir.fetch(JUDGE_CACHE)
        kw["cache_path"] = run_dir.local_path(JUDGE_CACHE)
    return JudgeSettings(**kw)


def _settings(c: ConfigDict) -> Any:
    from gadjax.eval.settings import EvalSettings

    e = c.eval
    return EvalSettings(
        max_prompts=int(e.max_prompts) or None,
        max_new_tokens=int(e.max_new_tokens) or int(c.rollout.max_new_tokens),
        batch_size=int(e.batch_size),
        max_prompt_tokens=int(c.data.max_prompt_tokens),
        marker=e.marker or None,
        temperature=float(e.temperature),
        seed=int(e.seed),
        two_sample=bool(e.two_sample),
        progress=False,
    )


class TrainingEvaluator:
    """Runs the periodic evaluation and keeps the selection; one per Trainer (every host takes part in
    the generation, process 0 writes)."""

    def __init__(self, c: ConfigDict, tokenizer: Any, mesh: Any, primary: bool):
        from gadjax.data.sources import open_source

        self.c, self.tokenizer, self.mesh, self.primary = c, tokenizer, mesh, primary
        self.every = int(c.eval.every)
        self.start_step = int(c.eval.get("start_step", 0))
        self.judge_every = int(c.eval.judge_every)
        self.settings = _settings(c)
        self.judge = _judge_settings(c) if self.judge_every else None
        source = open_source(list(c.eval.data), split="test")
        n = len(source) if not self.settings.max_prompts else min(len(source), self.settings.max_prompts)
        self.rows = [source[i] for i in range(n)]
        if not self.rows:
            raise ValueError(f"config.eval.data: {list(c.eval.data)} holds no rows")
        self.dir = paths.join(c.run_dir, "eval")
        self.selection_path = paths.join(c.run_dir, "selection.json")
        self.selector: Selector | None = None
        self._pending_reference = False
        if c.select.metric:
            self._load_or_create_selector()

    # ---- selection state ---------------------------------------------------------------------------
    def _new_selector(self, reference: float | None) -> Selector:
        s = self.c.select
        band = tuple(float(x) for x in s.length_band) or None
        return Selector(
            metric=str(s.metric),
            mode=str(s.mode),
            tiebreak=tuple(str(k) for k in s.get("tiebreak", ())),
            length_band=band,
            reference_length=reference if band else None,
        )

    def _load_or_create_selector(self) -> None:
        if self.c.resume and paths.exists(self.selection_path):
            state = json.loads(paths.read_text(self.selection_path))
            self.selector = self._new_selector(state.get("reference_length"))
            self.selector.restore(state)
            return
        # The reference length is known after the first evaluation ("first") or from its teacher lengths.
        self._pending_reference = bool(tuple(self.c.select.length_band))
        if not self._pending_reference:
            self.selector = self._new_selector(None)

    def forget_after(self, step: int) -> None:
        """Resume from ``step``: evaluations after it leave the history (they are about to be redone).
        A best checkpoint after ``step`` stays: it is a real evaluation of this run's trajectory, and the
        replayed evaluation of that step cannot beat it (ties keep the earlier entry)."""
        sel = self.selector
        if sel is None:
            return
        best_step = sel.best["step"] if sel.best else None
        sel.history = [h for h in sel.history if h["step"] <= step or h["step"] == best_step]

    # ---- the evaluation ----------------------------------------------------------------------------
    def due(self, steps_done: int, total_steps: int) -> bool:
        return evaluation_due(steps_done, total_steps, self.every, self.start_step)

    def judge_due(self, steps_done: int, total_steps: int) -> bool:
        return self.judge_every > 0 and (steps_done % self.judge_every == 0 or steps_done == total_steps)

    def evaluate(
        self,
        steps_done: int,
        student: Any,
        with_judge: bool = False,
        disc_score: Any = None,
    ) -> tuple[dict[str, Any], bool]:
        """Evaluate ``student`` ((graphdef, params)); returns (``eval/``-prefixed scalars for the step's
        metrics record, whether this evaluation is the new best). ``with_judge``: process 0 also runs the
        judge protocol (through its cache) and every process gets its scores, so all select alike.
        ``disc_score`` (warmup, gad: the trainer's D forward, padded batch -> scores [rows]): D also
        scores each eval row's (teacher, student) pair (gadjax.trainer.disc_validation)."""
        from gadjax.eval.runner import evaluate_model
        from gadjax.parallel.distributed import allgather_json

        settings = self.settings
        if with_judge and self.primary:
            settings = dataclasses.replace(settings, judge=self.judge)
        res = evaluate_model(student, self.tokenizer, self.rows, settings, mesh=self.mesh)
        summary = res["summary"]
        if disc_score is not None:
            summary.update(self._disc_validation(res["generations"], disc_score))
        if with_judge:
            summary.update(allgather_json({k: summary.get(k) for k in JUDGE_SUMMARY_KEYS})[0])
        if self.primary:
            self._write_generations(steps_done, res)
        new_best = False
        if self._pending_reference:
            ref_key = "teacher_length_mean" if self.c.select.length_reference == "teacher" else "length_mean"
            reference = summary.get(ref_key)
            if not reference:
                raise ValueError(
                    f"config.select.length_reference={self.c.select.length_reference!r}: the evaluation "
                    f"has no {ref_key} (eval.data rows need teacher responses for 'teacher')"
                )
            self.selector = self._new_selector(float(reference))
            self._pending_reference = False
        # A judge metric is only there on judge evaluations; the others are not candidates.
        judge_metric_missing = self.c.select.metric in JUDGE_SUMMARY_KEYS and not with_judge
        if self.selector is not None and not judge_metric_missing:
            new_best = self.selector.consider(steps_done, summary)
        flat = {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        flat["eval/time_s"] = float(res["timing_s"]["total"])
        if self.selector is not None:
            flat["eval/selected_step"] = self.selector.best["step"] if self.selector.best else -1
        return flat, new_best

    def _disc_validation(self, generations: list[dict[str, Any]], disc_score: Any) -> dict[str, Any]:
        from gadjax.trainer.disc_validation import disc_validation

        return disc_validation(
            self.c, self.tokenizer, self.mesh, generations, disc_score, self.settings.batch_size
        )

    def _write_generations(self, step: int, res: dict[str, Any]) -> None:
        lines = [json.dumps({"step": step, "summary": res["summary"], "decoding": res["decoding"]})]
        lines += [
            json.dumps({k: v for k, v in g.items() if k != "student_token_ids"}, ensure_ascii=False)
            for g in res["generations"]
        ]
        paths.write_text(paths.join(self.dir, f"step_{step}.jsonl"), "\n".join(lines) + "\n")

    def write_selection(self) -> None:
        """selection.json (process 0): call after the best checkpoint, if any, is committed."""
        if self.selector is None or not self.primary:
            return
        sel = self.selector
        state = {
            **sel.summary(),
            **sel.state(),
            "why": (
                "best "
                + ("lowest" if sel.mode == "min" else "highest")
                + f" {sel.metric} among evaluations whose {sel.length_key} is within "
                + (f"{list(sel.length_band)} x {sel.reference_length:.1f}" if sel.length_band else "any band")
            ),
        }
        paths.write_text(self.selection_path, json.dumps(state, indent=2, default=float))
