"""The study reuses the held-out record of a selected checkpoint that is the run's last step."""

from __future__ import annotations

from gadjax.study.results import Results
from gadjax.study.runner import Study


def _study(tmp_path, selected_step):
    study = Study.__new__(Study)  # only the results file is needed
    study.results = Results(str(tmp_path / "results.jsonl"))
    study.results.add(
        {
            "kind": "final", "name": "gad_sel_s0", "arm": "gad_sel", "seed": 0, "run": "gad_s0",
            "selection": {"selected_step": selected_step}, "c2st_accuracy": 0.61, "marker_gap": -0.2,
        }
    )  # fmt: skip
    return study


def test_selected_last_step_is_recorded_as_the_last_step(tmp_path):
    study = _study(tmp_path, selected_step=20)
    assert study._reuse_selected("gad_s0", "gad", 0, last_update=20)
    last = [r for r in Results(str(tmp_path / "results.jsonl")).records if r["name"] == "gad_s0"]
    assert len(last) == 1
    assert last[0]["kind"] == "final" and last[0]["arm"] == "gad" and last[0]["same_as"] == "gad_sel_s0"
    assert (last[0]["c2st_accuracy"], last[0]["marker_gap"]) == (0.61, -0.2)
    assert "selection" not in last[0]


def test_selected_earlier_step_is_evaluated_again(tmp_path):
    study = _study(tmp_path, selected_step=12)
    assert not study._reuse_selected("gad_s0", "gad", 0, last_update=20)
    assert not study.results.final_done("gad_s0")
    assert not study._reuse_selected("seqkd_s0", "seqkd", 0, last_update=20)  # no selection record
