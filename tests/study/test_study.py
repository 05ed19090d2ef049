"""The study at its CI budget (`python -m gadjax.study --budget ci`), as `make study` runs it: every
arm and ablation trains for a couple of steps, the report is written, and a second invocation finds
every run done (results.jsonl) and trains nothing.

Slow: the real 135M model, a teacher server, ten short training runs and their evaluations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gadjax.study import Results, split_validation
from gadjax.study.report import mean_se, paired
from tests.models.smollm2 import smollm2_gguf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(out: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "gadjax.study", "--out", out, "--budget", "ci", "--ablations"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"study failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_split_validation_is_disjoint_and_every_kth():
    rows = [{"i": i} for i in range(10)]
    train, val = split_validation(rows, 5)
    assert [r["i"] for r in val] == [4, 9]
    assert [r["i"] for r in train] == [0, 1, 2, 3, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="validation_every"):
        split_validation(rows, 1)


def test_mean_se_and_paired_differences():
    m, se = mean_se([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    ss = (1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2
    assert se == pytest.approx((ss / 2) ** 0.5 / 3**0.5)  # sample std (ddof 1) / sqrt(n)
    assert mean_se([2.0]) == (2.0, None)
    finals = {
        "gad_s0": {"seed": 0, "c2st_accuracy": 0.6},
        "gad_s1": {"seed": 1, "c2st_accuracy": 0.7},
        "seqkd_s0": {"seed": 0, "c2st_accuracy": 0.8},
        "seqkd_s1": {"seed": 1, "c2st_accuracy": 0.8},
        "seqkd_s2": {"seed": 2, "c2st_accuracy": 0.1},  # unpaired: ignored
    }
    m, se, n = paired(finals, "gad", "seqkd", "c2st_accuracy")
    assert n == 2 and m == pytest.approx(-0.15) and se == pytest.approx(0.05)


def test_results_drop_curves_of_unfinished_runs(tmp_path):
    path = str(tmp_path / "results.jsonl")
    r = Results(path)
    r.add({"kind": "curve", "run": "a", "updates": 1})
    r.add({"kind": "run", "run": "a"})
    r.add({"kind": "curve", "run": "b", "updates": 1})  # b was interrupted
    again = Results(path)
    assert again.run_done("a") and not again.run_done("b")
    assert [x["run"] for x in again.records if x["kind"] == "curve"] == ["a"]


@pytest.mark.slow
def test_study_ci_budget_end_to_end(tmp_path):
    smollm2_gguf()  # skips with the pip command when the wheel is missing
    out = str(tmp_path / "study")
    _run(out)
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    finals = {r["name"]: r for r in records if r["kind"] == "final"}
    expected = {"before", "teacher_resample", "warmup_s0", "gad_s0", "seqkd_s0"}
    expected.add("frozen_d_s0")
    assert expected <= set(finals), sorted(finals)
    for r in finals.values():
        assert 0.0 <= r["c2st_accuracy"] <= 1.0 and r["c2st_se"] >= 0
        assert r["decoding"]["temperature"] == pytest.approx(0.7)
    curves = [r for r in records if r["kind"] == "curve"]
    # Equal budgets: both main arms end at the same number of generator updates.
    end = {arm: max(r["updates"] for r in curves if r["arm"] == arm) for arm in ("gad", "seqkd")}
    assert end["gad"] == end["seqkd"] == 2 - 1 + 2
    assert finals["frozen_d_s0"]["length_mean"] >= 0
    # Checkpoint selection on validation, both main arms: the selected step is one of the run's own
    # evaluations, and its held-out evaluation is recorded apart from the last step's.
    for arm in ("gad", "seqkd"):
        sel = finals[f"{arm}_sel_s0"]["selection"]
        steps = [r["updates"] for r in curves if r["run"] == f"{arm}_s0"]
        assert sel["selected_step"] in steps and sel["candidates"] == len(steps), (arm, sel, steps)
    # seqkd is evaluated (and selected) at gad's generator updates only; D's validation accuracy where
    # there is a D (gad), not in seqkd.
    at = {arm: sorted(r["updates"] for r in curves if r["run"] == f"{arm}_s0") for arm in ("gad", "seqkd")}
    assert at["seqkd"] == at["gad"], at
    assert all(0 <= r["disc_val_accuracy"] <= 1 for r in curves if r["run"] in ("gad_s0", "warmup_s0"))
    assert not any("disc_val_accuracy" in r for r in curves if r["run"] == "seqkd_s0")
    report = open(os.path.join(out, "study.md"), encoding="utf-8").read()
    assert "## Held-out: final models" in report and "## Verdict" in report
    assert "teacher, second sample (calibration)" in report
    assert "gad, selected on validation" in report and "selected at generator updates" in report
    import matplotlib.image as mpimg

    for name in ("curves_main.png", "curves_ablations.png", "ablation_drift.png"):
        assert mpimg.imread(os.path.join(out, name)).ndim == 3

    # A second invocation trains nothing: every run is recorded as done.
    proc = _run(out)
    assert "--- warmup_s0" not in proc.stdout and "--- gad_s0" not in proc.stdout
