"""The demo report's table of D's validation accuracy (gadjax.demo.report.disc_validation_lines), from
metrics.jsonl files written here."""

from __future__ import annotations

import json

from gadjax.demo.report import disc_validation_lines


def _metrics(run_dir, records):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(run_dir)


def test_disc_validation_table_lists_each_evaluation_of_warmup_and_gad(tmp_path):
    warm = _metrics(
        tmp_path / "warmup",
        [
            {"step": 1, "d_acc": 0.5},
            {"step": 2, "d_acc": 0.75, "eval/disc_val_accuracy": 0.625, "eval/disc_val_score_gap": 0.25,
             "eval/disc_val_pairs": 8},
        ],
    )  # fmt: skip
    gad = _metrics(
        tmp_path / "gad",
        [{"step": 4, "d_acc": 0.9, "eval/disc_val_accuracy": 0.5, "eval/disc_val_score_gap": -0.125,
          "eval/disc_val_pairs": 8}],
    )  # fmt: skip
    lines = disc_validation_lines({"warmup": warm, "gad": gad, "seqkd": str(tmp_path / "none")})
    rows = [line for line in lines if line.startswith("| warmup") or line.startswith("| gad")]
    assert rows == [
        "| warmup | 2 | 0.625 | +0.250 | 8 | 0.750 |",
        "| gad | 4 | 0.500 | -0.125 | 8 | 0.900 |",
    ]
    assert disc_validation_lines({"warmup": _metrics(tmp_path / "w2", [{"step": 1}])})[0].startswith("No ")
