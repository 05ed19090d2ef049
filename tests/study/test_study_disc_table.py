"""The study report's table of D's validation accuracy (issue 27): mean +- SE over seeds per evaluation,
beside the n-gram C2ST at the same points, from the curve records the study's hook writes."""

from __future__ import annotations

import numpy as np

from gadjax.study.report import disc_table


def _curve(seed: int, stage: str, updates: int, acc: float, gap: float, c2st: float) -> dict:
    return {
        "kind": "curve", "arm": "gad", "seed": seed, "stage": stage, "updates": updates,
        "disc_val_accuracy": acc, "disc_val_score_gap": gap, "c2st_accuracy": c2st,
    }  # fmt: skip


def test_disc_table_rows_are_means_and_standard_errors_over_seeds():
    accs = [0.75, 0.5, 0.625]
    curves = [_curve(s, "gad", 12, a, 2.0 * a, 0.6) for s, a in enumerate(accs)]
    curves += [_curve(0, "warmup", 4, 0.9, 1.0, 0.7)]
    curves += [{"arm": "seqkd", "seed": 0, "stage": "seqkd", "updates": 12, "c2st_accuracy": 0.5}]
    lines = disc_table(curves)
    assert len(lines) == 4  # header, rule, warmup@4, gad@12 (seqkd has no D)
    assert lines[2].startswith("| warmup | 4 | 0.900")
    m, se = np.mean(accs), np.std(accs, ddof=1) / np.sqrt(len(accs))
    assert lines[3].startswith(f"| gad | 12 | {m:.3f} ± {se:.3f} |")
    assert lines[3].endswith("| 0.600 ± 0.000 | 3 |")


def test_disc_table_without_d_accuracy_says_so():
    no_d = {"arm": "gad", "stage": "gad", "updates": 4, "c2st_accuracy": 0.5}
    assert "no evaluation" in disc_table([no_d])[0]
