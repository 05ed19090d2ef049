"""One source of truth for the stage settings (issue 27): the demo and the study read the same table
(gadjax/demo/settings.py), the demo's stages evaluate on validation and select on gad and seqkd, and the
trainer's selection takes the tie-break the settings name."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from gadjax.demo.run import student_path
from gadjax.demo.settings import VALIDATED, split_validation, stage_settings
from gadjax.demo.stages import load_config, stage_config, with_validation
from gadjax.trainer.evaluation import evaluation_due

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("budget", ["full", "ci"])
def test_demo_and_study_run_the_same_stage_settings(budget):
    demo = load_config(os.path.join(REPO, "configs", "demo.py"), budget)
    study = load_config(os.path.join(REPO, "configs", "study.py"), budget)
    s = stage_settings(budget)
    for c in (demo, study):
        assert c.train.d_only_steps == s.d_only_steps
        assert c.optim_d.lr == s.d_lr and c.optim_g.lr == s.warmup_lr
    for key in ("warmup_steps", "gad_steps", "gad_lr", "gad_d_lr", "seqkd_lr", "eval_every", "select_metric",
                "validation_every", "validation_max"):  # fmt: skip
        assert demo.demo[key] == study.study[key] == getattr(s, key), key
    assert tuple(demo.demo.select_length_band) == tuple(study.study.select_length_band)
    assert study.study.eval_samples == s.eval_samples >= (2 if budget == "ci" else 4)
    assert s.seqkd_steps == s.warmup_steps - s.d_only_steps + s.gad_steps


def test_validated_gad_settings_are_the_studys_choice():
    full = VALIDATED["full"]
    assert (full.gad_steps, full.gad_lr) == (12, 1e-5)
    # issue 27: 16 SFT updates left the warmup student at the C2ST's noise floor (nothing for gad to do)
    assert full.warmup_steps - full.d_only_steps == 8
    assert full.select_metric == "c2st_accuracy" and full.select_length_band == (0.8, 1.25)
    assert full.d_only_steps > 3  # issue 27: 3 D-only steps left D near chance when gad started
    with pytest.raises(ValueError, match="budget"):
        stage_settings("huge")


def test_split_validation_every_kth_row():
    rows = [{"i": i} for i in range(7)]
    fit, val = split_validation(rows, 3)
    assert [r["i"] for r in val] == [2, 5] and [r["i"] for r in fit] == [0, 1, 3, 4, 6]


def test_demo_stage_configs_evaluate_on_validation_and_select(tmp_path):
    c = load_config(os.path.join(REPO, "configs", "demo.py"), "ci")
    val = str(tmp_path / "validation.jsonl")
    gad = stage_config(with_validation(c.copy_and_resolve_references(), "gad", val, select=True), "gad",
                       str(tmp_path / "gad"), 2, c.demo.gad_lr)  # fmt: skip
    warm = stage_config(with_validation(c.copy_and_resolve_references(), "warmup", val, select=False),
                        "warmup", str(tmp_path / "w"), 2, c.optim_g.lr)  # fmt: skip
    assert list(gad.eval.data) == [val] == list(warm.eval.data)
    assert gad.eval.every == c.demo.eval_every and gad.eval.temperature == c.demo.teacher_temperature
    assert gad.select.metric == "c2st_accuracy" and gad.select.mode == "min"
    assert tuple(gad.select.length_band) == tuple(c.demo.select_length_band)
    assert warm.select.metric == "" and "demo" not in gad
    assert gad.eval.start_step == 0 == warm.eval.start_step  # the default: from the first step
    assert gad.optim_d.lr == c.optim_d.lr == warm.optim_d.lr  # no d_lr: the config's
    gad_own = stage_config(c, "gad", str(tmp_path / "g2"), 2, c.demo.gad_lr, d_lr=c.demo.gad_d_lr * 3)
    assert gad_own.optim_d.lr == c.demo.gad_d_lr * 3 and gad_own.optim_g.lr == c.demo.gad_lr
    late = with_validation(c.copy_and_resolve_references(), "seqkd", val, select=True, start_step=6)
    assert late.eval.start_step == 6


def test_evaluation_start_step_moves_the_first_evaluation_only():
    # The demo's seqkd: 20 updates, evaluated at gad's updates (12, 16, 20), not at 4 and 8.
    assert [s for s in range(1, 21) if evaluation_due(s, 20, 4, start_step=12)] == [12, 16, 20]
    assert [s for s in range(1, 11) if evaluation_due(s, 10, 4)] == [4, 8, 10]  # the last step too
    assert [s for s in range(1, 11) if evaluation_due(s, 10, 4, start_step=9)] == [10]
    assert not any(evaluation_due(s, 10, 0) for s in range(1, 11))


def test_student_path_prefers_the_selected_export(tmp_path):
    runs = {"gad": str(tmp_path / "gad")}
    os.makedirs(os.path.join(runs["gad"], "export", "student"))
    assert student_path(runs, "gad").endswith(os.path.join("export", "student"))  # nothing selected
    os.makedirs(os.path.join(runs["gad"], "export", "best"))
    assert student_path(runs, "gad").endswith(os.path.join("export", "best"))
    assert student_path(runs, "gad_last").endswith(os.path.join("export", "student"))


def test_trainer_selection_uses_the_configured_tiebreak():
    from gadjax.config import base_config
    from gadjax.trainer.evaluation import TrainingEvaluator

    c = base_config()
    c.select.metric, c.select.mode, c.select.tiebreak = "c2st_accuracy", "min", ("marker_abs_gap",)
    sel = TrainingEvaluator._new_selector(SimpleNamespace(c=c), None)
    assert sel.consider(1, {"c2st_accuracy": 0.6, "marker_abs_gap": 0.3})
    assert sel.consider(2, {"c2st_accuracy": 0.6, "marker_abs_gap": 0.1})  # tie broken by the gap
    assert not sel.consider(3, {"c2st_accuracy": 0.6, "marker_abs_gap": 0.2})


def test_selection_summary_when_the_metric_was_not_computed():
    from gadjax.eval.selection import Selector

    sel = Selector(metric="c2st_accuracy", mode="min")
    assert sel.consider(2, {"c2st_accuracy": None})  # a C2ST skipped for too few validation rows
    assert not sel.consider(4, {"c2st_accuracy": None})  # ties keep the earlier step
    s = sel.summary()
    assert s["selected_step"] == 2 and s["selected_value"] is None
