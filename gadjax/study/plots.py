"""The study's PNG plots: teacher-likeness curves on validation and the ablations' drift."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gadjax.metrics import read_metrics  # noqa: E402
from gadjax.study.stats import mean_se  # noqa: E402

HEADLINE = (
    ("c2st_accuracy", "C2ST accuracy (0.5 = indistinguishable)"),
    ("marker_abs_gap", "|marker gap| (0 = teacher's rate)"),
)


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(
    out: str, curves: Sequence[Mapping[str, Any]], arms: Sequence[str], name: str, title: str
) -> str:
    """Teacher-likeness on the validation split against generator updates, mean +- SE over seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for arm in arms:
        pts = [c for c in curves if c["arm"] == arm]
        xs = sorted({c["updates"] for c in pts})
        for ax, (key, label) in zip(
            axes, (*HEADLINE, ("length_mean", "response length (tokens)")), strict=True
        ):
            ms, ses = [], []
            for x in xs:
                m, se = mean_se([c[key] for c in pts if c["updates"] == x])
                ms.append(m)
                ses.append(se or 0.0)
            if xs:
                ax.errorbar(xs, ms, yerr=ses, marker="o", capsize=3, label=arm)
            ax.set_xlabel("generator updates")
            ax.set_title(label, fontsize=10)
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].axhline(0.0, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, os.path.join(out, name))


def plot_drift(out: str, runs_dir: str, names: Sequence[str]) -> str:
    """Rollout length and D accuracy per gad step for the frozen-D pair and the other ablations."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        run = os.path.join(runs_dir, f"{name}_s0")
        if not os.path.exists(os.path.join(run, "metrics.jsonl")):
            continue
        recs = read_metrics(run)
        for ax, key in zip(axes, ("response_length_mean", "d_acc"), strict=True):
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=name)
    axes[0].set_title("rollout response length (tokens)")
    axes[1].set_title("D accuracy on the step's pairs")
    for ax in axes:
        ax.set_xlabel("gad step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, os.path.join(out, "ablation_drift.png"))
