# ruff: noqa: E501  (report prose: long f-string lines read better unwrapped)
"""The study's report: <out>/study.md and PNG plots, from <out>/results.jsonl and the runs' metrics.

Numbers: per-run evaluations carry their own standard errors (binomial for C2ST accuracy and the marker
gap); across seeds the table shows the mean and the standard error of the mean (std / sqrt(n), ddof 1).
GAD minus seqkd is paired by seed (same seed, same teacher corpus), and its SE is that of the paired
differences; on the held-out prompts it is also paired by prompt (several samples per prompt on each side:
gadjax.eval.paired), and every comparison states its minimum detectable effect at the achieved SE. The verdict lines apply issue 12's criteria literally and say plainly when they fail.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gadjax.metrics import read_metrics
from gadjax.study.plots import HEADLINE, plot_curves, plot_drift
from gadjax.study.stats import by_arm, finals_of, fmt, mde_text, mean_se, paired, prompt_paired

COLUMNS = (
    ("marker_rate", "marker rate"),
    ("marker_gap", "marker gap"),
    ("c2st_accuracy", "C2ST acc."),
    ("length_mean", "length"),
    ("truncation_rate", "truncated"),
)
ABLATION_LABELS = {
    "gad": "on-policy GAD (reference arm)",
    "frozen_d": "frozen D (off-policy reward model), long responses",
    "on_policy_long": "on-policy GAD, long responses (frozen-D pair)",
    "no_d_warmup": "no discriminator warmup (fresh D at gad start)",
    "bce": "binary cross-entropy D loss (own warmup)",
    "oracle": "oracle reward (marker count, no D in the reward)",
}


def main_table(finals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["| model | n seeds | " + " | ".join(lbl for _, lbl in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    rows: list[tuple[str, list[Mapping[str, Any]]]] = [
        ("before (untrained student)", [finals["before"]] if "before" in finals else []),
        ("warmup (GAD's start)", by_arm(finals, "warmup")),
        ("seqkd, last step", by_arm(finals, "seqkd")),
        ("gad, last step", by_arm(finals, "gad")),
        ("seqkd, selected on validation", by_arm(finals, "seqkd_sel")),
        ("gad, selected on validation", by_arm(finals, "gad_sel")),
        (
            "teacher, second sample (calibration)",
            [finals["teacher_resample"]] if "teacher_resample" in finals else [],
        ),
    ]
    for label, recs in rows:
        if not recs:
            continue
        cells = []
        for key, _ in COLUMNS:
            vals = [r.get(key) for r in recs]
            if len(recs) == 1:  # one run: its own (binomial) SE where it has one
                se_key = {"c2st_accuracy": "c2st_se", "marker_gap": "marker_gap_se"}.get(key)
                cells.append(
                    fmt(
                        vals[0],
                        recs[0].get(se_key) if se_key else None,
                        ".1f" if key == "length_mean" else ".3f",
                    )
                )
            else:
                m, se = mean_se(vals)
                cells.append(fmt(m, se, ".1f" if key == "length_mean" else ".3f"))
        lines.append(f"| {label} | {len(recs)} | " + " | ".join(cells) + " |")
    return lines


def prompt_paired_lines(finals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The held-out comparisons paired by prompt (marker rate), and each model's own gaps to the teacher,
    with the minimum detectable effect at the achieved standard error next to each."""
    lines = []
    for a, b, what in (
        ("gad", "seqkd", "GAD - seqkd, last step"),
        ("gad_sel", "seqkd_sel", "GAD - seqkd, selected on validation"),
        ("gad", "warmup", "GAD - its warmup start"),
    ):
        for r in prompt_paired(finals, a, b):
            lines.append(
                f"- marker rate, {what} ({r['what']}): {r['diff']:+.3f} (SE {r['se']:.3f}, paired t-test p "
                f"{r['p_value']:.2g}, {r['n']} prompts; MDE {r['mde']:.3f})"
            )
    gaps = [
        f"| {n} | {fmt(r.get('marker_gap'), r.get('marker_gap_se'))} | {mde_text(r.get('marker_gap_se'))} | "
        f"{fmt(r.get('c2st_accuracy'), r.get('c2st_se'))} | {mde_text(r.get('c2st_se'))} |"
        for n, r in sorted(finals.items())
        if r.get("per_prompt")
    ]
    if not lines and not gaps:
        return ["No evaluation carries per-prompt results (one sample per prompt: study.eval_samples = 1)."]
    if gaps:
        lines += [
            "",
            "Each model against the teacher on the same prompts (marker gap: paired by prompt; C2ST: folds "
            "grouped by prompt, SE clustered by prompt; C2ST's MDE is against chance 0.5):",
            "",
            "| model | marker gap ± SE | | C2ST accuracy ± SE | |",
            "|---|---|---|---|---|",
            *gaps,
        ]
    return lines


VERDICT_PAIRS = (
    ("gad", "seqkd", "last step"),
    ("gad_sel", "seqkd_sel", "checkpoints selected on validation (the paper's protocol)"),
)


def verdicts(
    finals: Mapping[str, Mapping[str, Any]], curves: Sequence[Mapping[str, Any]], runs_dir: str
) -> list[str]:
    """Issue 12's criteria, applied to the held-out numbers, each as a plain sentence: GAD vs seqkd
    (paired by seed) and GAD vs its own warmup start, for the last step and for the selected checkpoints."""
    out = []
    for gad, seqkd, what in VERDICT_PAIRS:
        if not by_arm(finals, gad):
            continue
        out.append(f"{what[0].upper()}{what[1:]}:")
        for key, label in HEADLINE:
            m, se, n = paired(finals, gad, seqkd, key)
            if m is None:
                continue
            se_txt = "n/a" if se is None else f"{se:.3f}"
            beyond = se is not None and abs(m) > 2 * se
            word = "closer to" if m < 0 else "further from" if m > 0 else "as close to"
            sig = "beyond 2 x SE" if beyond else "within 2 x SE (not distinguishable at this size)"
            out.append(
                f"- {label}: GAD - seqkd = {m:+.3f} (SE {se_txt}, {n} paired seeds; {mde_text(se)}): GAD is "
                f"{word} the teacher than seqkd, {sig}."
            )
            m2, se2, n2 = paired(finals, gad, "warmup", key)
            if m2 is not None:
                se2_txt = "n/a" if se2 is None else f"{se2:.3f}"
                out.append(
                    f"  GAD - its warmup start = {m2:+.3f} (SE {se2_txt}, {n2} seeds; {mde_text(se2)}): the gad stage "
                    f"moved the student {'towards' if m2 < 0 else 'away from'} the teacher "
                    f"({'beyond' if se2 is not None and abs(m2) > 2 * se2 else 'within'} 2 x SE)."
                )
        sel = [r.get("selection", {}).get("selected_step") for r in by_arm(finals, gad)]
        sel_s = [r.get("selection", {}).get("selected_step") for r in by_arm(finals, seqkd)]
        if any(x is not None for x in sel + sel_s):
            out.append(f"- selected at generator updates: GAD {sel}, seqkd {sel_s} (by seed).")
        out.append("")
    drift = length_drift(runs_dir)
    for name in ("frozen_d", "on_policy_long"):
        if name in drift:
            a, b = drift[name]
            out.append(
                f"- {ABLATION_LABELS[name]}: rollout length {a:.1f} -> {b:.1f} tokens over the gad stage "
                f"(x{b / max(a, 1e-9):.2f})."
            )
    return out


def length_drift(runs_dir: str, window: int = 5) -> dict[str, tuple[float, float]]:
    """Mean rollout response length over the first and the last `window` steps of the long-response runs."""
    out = {}
    for name in ("frozen_d", "on_policy_long"):
        for seed_dir in (
            sorted(d for d in os.listdir(runs_dir) if d.startswith(name + "_s"))
            if os.path.isdir(runs_dir)
            else []
        ):
            recs = read_metrics(os.path.join(runs_dir, seed_dir))
            lengths = [r["response_length_mean"] for r in recs if "response_length_mean" in r]
            if len(lengths) >= 2:
                w = min(window, len(lengths) // 2)
                out[name] = (float(np.mean(lengths[:w])), float(np.mean(lengths[-w:])))
            break
    return out


def disc_table(curves: Sequence[Mapping[str, Any]]) -> list[str]:
    """D's accuracy on the validation pairs (teacher response vs the student's first draw, prompts D never
    trained on) at each evaluation of the GAD arm, mean +- SE over seeds, beside the n-gram C2ST at the same
    points: how separable the two distributions are to a reference classifier vs to the reward model."""
    pts = [c for c in curves if c.get("arm") == "gad" and c.get("disc_val_accuracy") is not None]
    if not pts:
        return ["(no evaluation with D's validation accuracy in results.jsonl)"]
    lines = [
        "| stage | generator updates | D validation accuracy | D score gap (teacher - student) | "
        "C2ST accuracy (n-gram) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for stage, updates in sorted({(c["stage"], c["updates"]) for c in pts}, key=lambda k: (k[1], k[0])):
        at = [c for c in pts if (c["stage"], c["updates"]) == (stage, updates)]
        cells = [fmt(*mean_se([c[k] for c in at])) for k in ("disc_val_accuracy", "disc_val_score_gap")]
        c2st = fmt(*mean_se([c["c2st_accuracy"] for c in at]))
        lines.append(f"| {stage} | {updates} | {cells[0]} | {cells[1]} | {c2st} | {len(at)} |")
    return lines


# --------------------------------------------------------------------------------------------- report
def write(out: str, c: Any, records: Sequence[Mapping[str, Any]], state: Mapping[str, Any]) -> str:
    """Write <out>/study.md (+ plots); returns its path."""
    finals = finals_of(records)
    curves = [r for r in records if r["kind"] == "curve"]
    runs_dir = os.path.join(out, "runs")
    s = c.study
    w, g = int(s.warmup_steps), int(s.gad_steps)
    d_only = int(c.train.d_only_steps)
    plots = [
        plot_curves(
            out,
            curves,
            ("gad", "seqkd"),
            "curves_main.png",
            "GAD (warmup, then gad) vs seqkd on the validation split, mean ± SE over seeds",
        ),
    ]
    abl = [
        a
        for a in ("on_policy_long", "frozen_d", "no_d_warmup", "bce", "oracle")
        if any(c_["arm"] == a for c_ in curves)
    ]
    if abl:
        plots.append(
            plot_curves(
                out,
                [x for x in curves if x["arm"] in abl or (x["arm"] == "gad" and x["seed"] == 0)],
                ("gad", *abl),
                "curves_ablations.png",
                "ablations (seed 0) on the validation split",
            )
        )
        plots.append(plot_drift(out, runs_dir, ("gad", *abl)))
    lines = [
        "# gadjax study: GAD vs seqkd, and the paper's ablations, in miniature",
        "",
        f"Command: `python -m gadjax.study --budget {s.budget}` (`make study`). Teacher: SmolLM2-135M-Instruct "
        "behind a hidden French system prompt (black box: the student sees its text only); student and D: the same "
        "model without it. Teacher corpus sampled at T="
        f"{c.demo.teacher_temperature}, max {c.demo.teacher_max_tokens} tokens.",
        "",
        f"Budget per seed (equal generator updates): GAD = warmup {w} steps ({d_only} D-only, so {w - d_only} SFT "
        f"updates, lr {c.optim_g.lr:g}; D lr {c.optim_d.lr:g}) + gad {g} steps (lr {s.gad_lr:g}; D lr {s.gad_d_lr:g}); seqkd = {w - d_only + g} SFT updates "
        f"(lr {s.seqkd_lr:g}). {c.data.batch_size} prompts x N={c.rollout.n_samples} samples per step, rollout T="
        f"{c.rollout.temperature}. Seeds: {list(s.seeds)}. Machine load at start/end: "
        f"{state.get('loadavg_start')} / {state.get('loadavg_end')}; wall time {state.get('total_s_all', state.get('total_s', 0)) / 60:.1f} min (all invocations).",
        "",
        "Teacher-likeness is measured as distribution matching, with student and teacher responses drawn the SAME "
        f"way (both sampled at T={c.demo.teacher_temperature}): the C2ST accuracy of an n-gram logistic-regression "
        "classifier (independent of GAD's D; 0.5 = indistinguishable) and the marker gap (student minus teacher "
        "rate of French answers; 0 is best, overshooting counts against). Curves use the validation split "
        f"(every training prompt at a position divisible by {s.validation_every}, never trained on); the table below uses the held-out split, "
        "evaluated once at the end. No setting was tuned on the held-out split.",
        "",
        *(
            [
                f"Checkpoint selection (the paper keeps the best evaluation whose length is in band): in each "
                f"main-arm run, the validation evaluation with the lowest {s.select_metric} (ties: "
                f"{', '.join(s.select_tiebreak) or 'none'}) whose mean length is within "
                f"{list(s.select_length_band) if s.select_length_band else 'any'} x the teacher's mean validation length "
                "is kept and evaluated once on held-out. Both arms are selected the same way, every "
                f"{s.eval_every} generator updates; the last-step rows are shown as well."
            ]
            if s.get("select_metric")
            else []
        ),
        "",
        "## Held-out: final models",
        "",
        *main_table(finals),
        "",
        "Multi-seed rows: mean ± standard error over seeds. Single rows: the run's own binomial SE.",
        "",
        "## Verdict (issue 12's criteria, held-out)",
        "",
        *verdicts(finals, curves, runs_dir),
        "",
        "## Paired by prompt (held-out)",
        "",
        f"Every evaluation draws {s.get('eval_samples', 1)} samples per prompt on each side (the teacher's: "
        "its collected response plus draws of the same embedded teacher), so two models are compared prompt by "
        "prompt and prompts are the unit of each standard error. MDE: the smallest true difference a two-sided "
        "5% test detects with 80% power at that SE (2.8 x SE); a difference below it is not evidence either way.",
        "",
        *prompt_paired_lines(finals),
        "",
        "## Curves (validation split)",
        "",
        "![GAD vs seqkd](curves_main.png)",
        "",
        "## The discriminator on validation",
        "",
        "D's accuracy on (teacher, student) pairs of the validation prompts at each evaluation of the GAD arm "
        "(0.5 = chance: a reward with no signal), beside the n-gram C2ST's accuracy on the same evaluation "
        "(both near 0.5 once the student's samples are hard to tell from the teacher's).",
        "",
        *disc_table(curves),
        "",
    ]
    abl_finals = [
        (n, r) for n, r in finals.items() if r.get("arm") in ABLATION_LABELS and r.get("arm") != "gad"
    ]
    if abl_finals:
        lines += [
            "## Ablations (held-out, one seed)",
            "",
            "| run | what | " + " | ".join(lbl for _, lbl in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 2) + "|",
        ]
        ref = [(n, r) for n, r in finals.items() if n == "gad_s0"]
        for n, r in ref + sorted(abl_finals):
            cells = [fmt(r.get(k), None, ".1f" if k == "length_mean" else ".3f") for k, _ in COLUMNS]
            lines.append(f"| {n} | {ABLATION_LABELS.get(r['arm'], r['arm'])} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Long-response runs were evaluated with the same longer max_new_tokens as their rollouts; the "
            "teacher's responses stay capped at the corpus length, so length drift shows up as a C2ST gap.",
            "",
            "![ablation curves](curves_ablations.png)",
            "",
            "![ablation drift](ablation_drift.png)",
            "",
        ]
    missing = [
        f"{a}_s{seed}" for seed in s.ablation_seeds for a in s.ablations if f"{a}_s{seed}" not in finals
    ]
    missing = [
        f"{arm}_s{seed}" for seed in s.seeds for arm in ("gad", "seqkd") if f"{arm}_s{seed}" not in finals
    ] + missing
    if missing:
        lines += [
            "## Not run yet",
            "",
            "Configured but without a final evaluation (the study was stopped before them; `make study` "
            f"resumes and skips finished runs): {', '.join(missing)}.",
            "",
        ]
    lines += [
        "## Files",
        "",
        "- results.jsonl: every curve point and final evaluation (with per-run SEs)",
        "- runs/<run>/metrics.jsonl: per-step training metrics (D accuracy, lengths, rewards, losses)",
        "- " + ", ".join(os.path.basename(p) for p in plots),
        "",
    ]
    path = os.path.join(out, "study.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
