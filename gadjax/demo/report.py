"""The demo's report: <out>/report.md and PNG plots (matplotlib, Agg backend; no display needed).

Plots: D accuracy (on the training pairs and on the validation prompts' pairs, eval/disc_val_accuracy,
also tabulated per evaluation), teacher vs student D scores, GAD reward, rollout response length and the
losses over steps (warmup then gad on one axis; seqkd's SFT loss alongside), and before / seqkd / gad bars per
held-out metric with the teacher's own value as a line. The text states what improved and what did
not, with a binomial standard error on the marker rates (58 held-out prompts: +-0.06 is noise).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gadjax.metrics import read_metrics  # noqa: E402

# "seqkd" / "gad": the students selected on validation (best in-band evaluation); "*_last": the last step.
MODELS = ("before", "warmup", "seqkd_last", "seqkd", "gad_last", "gad")
# (summary key, label, higher is better?, teacher value key in the teacher column)
METRICS = (
    ("c2st_accuracy", "C2ST accuracy, sampled (0.5 = indistinguishable from the teacher)", False),
    ("marker_gap", "marker gap, sampled (student - teacher French rate; 0 = match)", None),
    ("sampled_marker_rate", "persona marker rate, sampled", None),
    ("marker_rate", "persona marker rate, greedy (--judge)", True),
    ("rouge_l", "ROUGE-L F1 vs teacher (greedy with --judge, else sampled)", True),
    ("length_mean", "response length (tokens, mean)", None),
    ("truncation_rate", "truncated at max tokens", None),
    ("judge_score", "judge score (50 = parity)", True),
)


def chat_command(gad_run_dir: str) -> str:
    """The command that serves the exported GAD student (the one selected on validation) for chatting."""
    return f"python -m gadjax.serve --model {_gad_student(gad_run_dir)} --port 8000"


def _gad_student(gad_run_dir: str) -> str:
    best = os.path.join(gad_run_dir, "export", "best")
    return best if os.path.isdir(best) else os.path.join(gad_run_dir, "export", "student")


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _stderr(p: float | None, n: int) -> float | None:
    return None if p is None or n <= 0 else math.sqrt(max(p * (1 - p), 1e-12) / n)


def teacher_column(state: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The teacher's own numbers on the held-out prompts (its responses vs themselves where defined)."""
    any_s = next(iter(summaries.values()), {})
    judge = (state.get("judge") or {}).get("teacher") or {}
    resample = state.get("teacher_resample") or {}
    return {
        "c2st_accuracy": resample.get("c2st_accuracy"),
        "marker_gap": resample.get("marker_gap"),
        "sampled_marker_rate": state.get("teacher", {}).get("heldout", {}).get("marker_rate"),
        "marker_rate": state.get("teacher", {}).get("heldout", {}).get("marker_rate"),
        "rouge_l": 1.0,
        "length_mean": any_s.get("teacher_length_mean"),
        "truncation_rate": None,
        "judge_score": judge.get("score"),
    }


# --------------------------------------------------------------------------------------------- plots
def _series(records: Sequence[Mapping[str, Any]], key: str, offset: int = 0) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["step"] + offset)
            ys.append(v)
    return xs, ys


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training(out: str, runs: Mapping[str, str]) -> list[str]:
    """Curves over steps; warmup then gad share one x axis (gad steps offset by the warmup length)."""
    recs = {k: read_metrics(v) for k, v in runs.items() if os.path.exists(os.path.join(v, "metrics.jsonl"))}
    warm, gad, seqkd = recs.get("warmup", []), recs.get("gad", []), recs.get("seqkd", [])
    off = max((r["step"] for r in warm), default=0)
    paths = []

    def adversarial(key_sets: Sequence[tuple[str, str]], title: str, ylabel: str, name: str) -> None:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in key_sets:
            for recs_, o, stage in ((warm, 0, "warmup"), (gad, off, "gad")):
                xs, ys = _series(recs_, key, o)
                if xs:
                    ax.plot(xs, ys, marker=".", label=f"{label} ({stage})")
        if off and gad:
            ax.axvline(off + 0.5, color="grey", ls=":", lw=1)
        ax.set_xlabel("step (warmup, then gad)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        paths.append(_save(fig, os.path.join(out, name)))

    adversarial(
        [("d_acc", "D accuracy, training pairs"), ("eval/disc_val_accuracy", "D accuracy, validation pairs")],
        "D accuracy: fraction of pairs with D(teacher) > D(student)",
        "d_acc",
        "d_acc.png",
    )
    adversarial(
        [("teacher_score_mean", "D(teacher)"), ("student_score_mean", "D(student)")],
        "discriminator scores",
        "mean score",
        "d_scores.png",
    )
    adversarial([("reward_mean", "reward mean"), ("reward_std", "reward std")], "GAD reward = D(student)",
                "reward", "reward.png")  # fmt: skip
    adversarial([("response_length_mean", "mean"), ("response_length_max", "max")],
                "student rollout response length", "tokens", "response_length.png")  # fmt: skip

    fig, ax = plt.subplots(figsize=(7, 4))
    for recs_, o, key, label in (
        (warm, 0, "sft_loss", "SFT loss (warmup)"),
        (warm, 0, "d_loss", "D loss (warmup)"),
        (gad, off, "d_loss", "D loss (gad)"),
        (gad, off, "pg_loss", "policy loss (gad)"),
        (gad, off, "kl_loss", "KL to reference (gad)"),
        (seqkd, 0, "sft_loss", "SFT loss (seqkd baseline)"),
    ):
        xs, ys = _series(recs_, key, o)
        if xs:
            ax.plot(xs, ys, marker=".", label=label)
    ax.set_xlabel("step (warmup, then gad; seqkd from 1)")
    ax.set_ylabel("loss")
    ax.set_title("losses")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths.append(_save(fig, os.path.join(out, "losses.png")))
    return paths


def disc_validation_lines(runs: Mapping[str, str]) -> list[str]:
    """D's accuracy on the validation prompts (never trained on) at each evaluation of warmup and gad:
    the curve as a table (step -> accuracy, mean score gap), next to the training-batch d_acc."""
    rows = []
    for stage in ("warmup", "gad"):
        path = runs.get(stage, "")
        if not os.path.exists(os.path.join(path, "metrics.jsonl")):
            continue
        for r in read_metrics(path):
            if r.get("eval/disc_val_accuracy") is None:
                continue
            rows.append(
                f"| {stage} | {r['step']} | {_fmt(r['eval/disc_val_accuracy'])} | "
                f"{_fmt(r.get('eval/disc_val_score_gap'), '+.3f')} | {r.get('eval/disc_val_pairs')} | "
                f"{_fmt(r.get('d_acc'))} |"
            )
    if not rows:
        return ["No validation evaluation of D was logged (eval.every = 0, or a run without D)."]
    return [
        "D scores each validation prompt's (teacher response, sampled student response) pair at every "
        "evaluation; accuracy = fraction of pairs with D(teacher) > D(student) (0.5 = chance), gap = mean "
        "D(teacher) - D(student). The training-pair d_acc of the same step is shown for comparison: a D "
        "that only memorised its batches is accurate there and not here.",
        "",
        "| stage | step | D accuracy (validation) | score gap | pairs | d_acc (training pairs) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def plot_bars(out: str, summaries: Mapping[str, Mapping[str, Any]], teacher: Mapping[str, Any]) -> str:
    """One panel per metric: before / seqkd / gad bars, the teacher's value as a dashed line."""
    keys = [(k, label) for k, label, _ in METRICS if k != "truncation_rate"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    for ax, (key, label) in zip(axes, keys, strict=True):
        names = [m for m in MODELS if m in summaries]
        vals = [summaries[m].get(key) for m in names]
        palette = {"before": "#999999", "warmup": "#8172b3", "seqkd_last": "#a6bddb", "seqkd": "#4c72b0",
                   "gad_last": "#fdbe85", "gad": "#dd8452"}  # fmt: skip
        colors = [palette[m] for m in names]
        ax.bar(names, [v if v is not None else 0.0 for v in vals], color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v if v is not None else 0.0, _fmt(v, ".2f"), ha="center", va="bottom", fontsize=8)
        if teacher.get(key) is not None:
            ax.axhline(teacher[key], color="green", ls="--", lw=1, label="teacher")
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=9)
    return _save(fig, os.path.join(out, "metrics_bars.png"))


# -------------------------------------------------------------------------------------------- text
def findings(summaries: Mapping[str, Mapping[str, Any]], teacher: Mapping[str, Any]) -> list[str]:
    """Plain statements of what improved and what did not (no metric is tuned or selected)."""
    lines = []
    n = int(next(iter(summaries.values()), {}).get("n_prompts") or 0)

    def cmp(a: str, b: str, key: str, label: str, se: bool = False) -> None:
        if a not in summaries or b not in summaries:
            return
        x, y = summaries[a].get(key), summaries[b].get(key)
        if x is None or y is None:
            return
        diff = x - y
        noise = ""
        if se:
            s = math.sqrt((_stderr(x, n) or 0) ** 2 + (_stderr(y, n) or 0) ** 2)
            within = abs(diff) < 2 * s
            verdict = "within noise" if within else "beyond noise"
            noise = f" (2 x std. error of the difference = {2 * s:.2f}: {verdict})"
        verb = "higher than" if diff > 0 else "lower than" if diff < 0 else "equal to"
        lines.append(f"- {label}: {a} {x:.3f} is {verb} {b} {y:.3f} (difference {diff:+.3f}){noise}.")

    # Distribution metrics: distance from "indistinguishable" (C2ST 0.5, marker gap 0), one seed.
    likeness = (
        ("c2st_accuracy", "c2st_se", 0.5, "C2ST accuracy (0.5 = indistinguishable)"),
        ("marker_gap", "marker_gap_se", 0.0, "Marker gap (0 = the teacher's rate)"),
    )
    for key, se_key, ideal, label in likeness:
        for a, b in (("gad", "seqkd"), ("gad", "warmup")):
            if a not in summaries or b not in summaries or summaries[a].get(key) is None:
                continue
            x, y = summaries[a][key], summaries[b][key]
            two_se = 2 * math.hypot(summaries[a].get(se_key) or 0.0, summaries[b].get(se_key) or 0.0)
            closer = "closer to" if abs(x - ideal) < abs(y - ideal) else "not closer to"
            lines.append(
                f"- {label}: {a} {x:+.3f} vs {b} {y:+.3f}; {a} is {closer} "
                f"the teacher ({'beyond' if abs(x - y) > two_se else 'within'} 2 x SE = {two_se:.3f}; one "
                "seed: `make study` is the multi-seed comparison)."
            )
    cmp("gad", "before", "marker_rate", "Marker rate", se=True)
    cmp("seqkd", "before", "marker_rate", "Marker rate", se=True)
    cmp("gad", "seqkd", "marker_rate", "Marker rate, GAD vs the seqkd baseline", se=True)
    if "gad" in summaries and "seqkd" in summaries:
        g, s = summaries["gad"].get("marker_rate"), summaries["seqkd"].get("marker_rate")
        if g is not None and s is not None and g <= s:
            lines.append(
                "- **GAD does not beat seqkd on the marker rate in this run.** The curves below show what "
                "the discriminator and the reward did; nothing was tuned on the held-out metric."
            )
    if teacher.get("marker_rate") is not None and "gad" in summaries:
        lines.append(
            f"- The teacher's own marker rate on these prompts is {teacher['marker_rate']:.3f} (the "
            f"ceiling); the GAD student's is {summaries['gad'].get('marker_rate', 0):.3f}."
        )
    cmp("gad", "before", "rouge_l", "ROUGE-L")
    cmp("gad", "seqkd", "rouge_l", "ROUGE-L, GAD vs seqkd")
    cmp("gad", "before", "length_mean", "Mean response length (tokens)")
    cmp("gad", "seqkd", "length_mean", "Mean response length, GAD vs seqkd")
    cmp("gad", "before", "judge_score", "Judge score")
    cmp("gad", "seqkd", "judge_score", "Judge score, GAD vs seqkd")
    return lines


def _table(summaries: Mapping[str, Mapping[str, Any]], teacher: Mapping[str, Any]) -> list[str]:
    names = [m for m in MODELS if m in summaries]
    head = "| metric | " + " | ".join(names) + " | teacher |"
    rows = [head, "|---" * (len(names) + 2) + "|"]
    greedy = any(summaries[m].get("decoding_of_rows") == "greedy" for m in names)
    for key, label, _ in METRICS:
        if key == "marker_rate" and not greedy:
            continue  # without --judge there is no greedy pass: the sampled marker row says it all
        spec = ".1f" if key in ("length_mean", "judge_score") else ".3f"
        cells = [_fmt(summaries[m].get(key), spec) for m in names]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(teacher.get(key), spec)} |")
    judged = [f"{summaries[m].get('judge_n_ok')}/{summaries[m].get('judge_n_failed')}" for m in names]
    rows.append("| judge items ok / failed | " + " | ".join(judged) + " | |")
    counts = " | ".join(str(summaries[m].get("n_prompts")) for m in names)
    rows.append(f"| held-out prompts | {counts} | |")
    return rows


def key_numbers(summaries: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any]) -> str:
    """The closing lines of the demo: the key numbers per model and the teacher's."""
    teacher = teacher_column(state, summaries)
    parts = []
    for m in MODELS:
        if m in summaries:
            s = summaries[m]
            parts.append(
                f"{m}: marker {_fmt(s.get('marker_rate'), '.2f')} ROUGE-L {_fmt(s.get('rouge_l'), '.3f')} "
                f"len {_fmt(s.get('length_mean'), '.1f')} judge {_fmt(s.get('judge_score'), '.1f')}"
            )
    parts.append(
        f"teacher: marker {_fmt(teacher['marker_rate'], '.2f')} judge {_fmt(teacher['judge_score'], '.1f')}"
    )
    return "[demo] key numbers | " + " | ".join(parts)


def selection_lines(runs: Mapping[str, str], demo: Mapping[str, Any]) -> list[str]:
    """Which checkpoint each arm's "selected" column is (from the run's selection.json)."""
    import json

    lines = [
        f"- Selection (paper protocol, as the study): every {demo.get('eval_every')} steps each stage is "
        "evaluated on a validation split of the training prompts (never trained on); the gad and seqkd "
        f"columns are the evaluation with the lowest {demo.get('select_metric')} whose mean length is within "
        f"{list(demo.get('select_length_band') or [])} x the teacher's; the *_last columns are the last step."
    ]
    for arm in ("gad", "seqkd"):
        path = os.path.join(runs.get(arm, ""), "selection.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                s = json.load(f)
            step = s.get("selected_step")
            what = "no evaluation in band: the last step is reported"
            if step is not None:
                what = f"step {step} selected ({s.get('metric')} {_fmt(s.get('selected_value'))})"
            lines.append(f"  - {arm}: {what}; out-of-band steps {s.get('out_of_band_steps')}.")
    return lines


def write_report(
    out: str,
    state: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    runs: Mapping[str, str],
) -> dict[str, Any]:
    """Write <out>/report.md and the plots; returns {"report": path, "plots": [paths]}."""
    teacher = teacher_column(state, summaries)
    plots = plot_training(out, runs)
    plots.append(plot_bars(out, summaries, teacher))
    cfg = state.get("config", {})
    demo = cfg.get("demo", {})
    t = state.get("teacher", {})
    tr, data, ro = cfg.get("train", {}), cfg.get("data", {}), cfg.get("rollout", {})
    og, od, loss = cfg.get("optim_g", {}), cfg.get("optim_d", {}), cfg.get("loss", {})
    seqkd_steps = demo.get("warmup_steps", 0) - tr.get("d_only_steps", 0) + demo.get("gad_steps", 0)
    plan = state.get("plan_s") or {}
    lines = [
        "# gadjax demo: GAD on SmolLM2-135M-Instruct from a black-box persona teacher",
        "",
        "## What was run",
        "",
        f"- Budget `{state.get('budget')}`; model `{os.path.basename(str(state.get('model')))}` (student and "
        "teacher weights are the same; float32 on CPU).",
        "- Teacher: `python -m gadjax.serve` on loopback with a HIDDEN system prompt (answer in French, "
        "gadjax/demo/persona.py). The student only ever saw the user prompts and the teacher's text.",
        f"- Teacher sampling: temperature {t.get('temperature')}, max {t.get('max_tokens')} tokens "
        "(sampled rather than greedy: a chat API answers with temperature, and the discriminator then "
        "faces the teacher's real variety). "
        f"Responses: {t.get('train', {}).get('responses')} train / {t.get('heldout', {}).get('responses')} "
        f"held-out; {t.get('requests')} requests this run, {t.get('cache_hits')} from the cache, "
        f"{t.get('failures')} failed.",
        f"- Stages: warmup {demo.get('warmup_steps')} steps ({tr.get('d_only_steps')} "
        f"D-only) -> gad {demo.get('gad_steps')} steps (init_from warmup; KL reference = warmup G)"
        + (
            f"; seqkd baseline {seqkd_steps} "
            "steps from the same base model (as many G updates as warmup + gad)."
            if state.get("compare")
            else "; no seqkd baseline (--no-compare)."
        ),
        *selection_lines(runs, demo),
        f"- Per step: {data.get('batch_size')} prompts x N={ro.get('n_samples')} student samples "
        f"(T={ro.get('temperature')}, max {ro.get('max_new_tokens')} tokens); G lr: warmup {og.get('lr')}, "
        f"gad {demo.get('gad_lr')}, seqkd {demo.get('seqkd_lr')}; D lr: warmup {od.get('lr')}, "
        f"gad {demo.get('gad_d_lr', od.get('lr'))}; "
        f"KL beta {loss.get('kl_beta')}; grad clip {og.get('grad_clip_norm')}; "
        f"devices {state.get('jax', {}).get('devices')}.",
        "- Evaluation: held-out prompts (data/demo/heldout.jsonl), same max tokens, responses sampled at the "
        "teacher's temperature (with --judge also greedy, as SPEC.md judges greedy answers). Judge: "
        f"the paper's judge on the first {demo.get('judge_prompts')} held-out prompts against a second local "
        "server WITHOUT the persona, serving the same 135M model. **A 135M judge is weak**: its scores are "
        "barely better than noise and many ratings do not parse (failures are counted, not guessed).",
        "",
        "## Results (held-out prompts)",
        "",
        *_table(summaries, teacher),
        "",
        "Teacher column: its own responses (marker rate, length; ROUGE-L of the teacher against itself is "
        "1 by definition; its judge score rates the teacher's responses with the same protocol). Its C2ST "
        "and marker gap compare a SECOND teacher sample (same weights and hidden prompt, same temperature) "
        "with the collected one: the calibration of those two metrics (0.5 and 0 up to noise).",
        "",
        "Sampled rows: student and teacher responses drawn the same way, sampled at the teacher's "
        f"temperature ({t.get('temperature')}), one per held-out prompt; C2ST = held-out accuracy of an "
        "n-gram logistic-regression classifier (independent of GAD's discriminator) telling student from "
        "teacher responses. With --judge, ROUGE-L, lengths and the greedy marker rate come from a greedy "
        "pass (the SPEC.md protocol, as the judge rates greedy answers); without it from the sampled "
        "responses.",
        "",
        "## Discriminator on validation prompts",
        "",
        *disc_validation_lines(runs),
        "",
        "## What improved and what did not",
        "",
        *findings(summaries, teacher),
        "",
        "## Curves",
        "",
        *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots],
        "",
        "## Timings (seconds)",
        "",
        "| phase | plan (idle machine) | actual |",
        "|---|---|---|",
        *[f"| {k} | {plan.get(k, '')} | {v:.1f} |" for k, v in (state.get("timings_s") or {}).items()],
        f"| total (this process) | {sum(plan.values())} | {state.get('total_s', 0):.1f} |",
        "",
        f"Load average (1 / 5 / 15 min) at the start: {state.get('loadavg_start')}, before the report: "
        f"{state.get('loadavg_end')} (2 cores; other work on the machine slows every phase).",
        "",
        "## Servers",
        "",
        *[
            f"- {name}: pid {info.get('pid')}, persona {'on (hidden)' if info.get('persona') else 'off'}, "
            f"stopped with exit status {info.get('returncode')}"
            for name, info in (state.get("servers") or {}).items()
            if info
        ],
        *(
            ["- teacher: not started (every response was in the cache)"]
            if not (state.get("servers") or {}).get("teacher")
            else []
        ),
        "",
        "## Files",
        "",
        f"- GAD student (Hugging Face directory): `{_gad_student(runs['gad'])}`",
        f"- Chat with it: `{chat_command(runs['gad'])}`, then any OpenAI client at http://127.0.0.1:8000/v1",
        "- Per-model evaluations: `eval_<name>.json`, one line per prompt in `generations_<name>.jsonl`",
        "- Training runs (metrics.jsonl, config.json, checkpoints): "
        + ", ".join(f"`{v}`" for k, v in runs.items() if os.path.isdir(v)),
        "- Teacher corpus: `data/train.jsonl`, `data/heldout.jsonl`; cache: `teacher_cache.sqlite`",
        "",
    ]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return {"report": path, "plots": plots}
