"""The study's statistics over its records: mean and standard error over seeds, comparisons paired by seed
and by prompt (gadjax.eval.paired), minimum detectable effects, and the final records of each arm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (ddof 1); SE None for fewer than 2 values."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return None, None
    m = float(np.mean(xs))
    return m, (float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else None)


def fmt(m: float | None, se: float | None = None, spec: str = ".3f") -> str:
    if m is None:
        return "n/a"
    return format(m, spec) + (f" ± {format(se, spec)}" if se is not None else "")


def finals_of(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: dict(r) for r in records if r["kind"] == "final"}


def by_arm(finals: Mapping[str, Mapping[str, Any]], prefix: str) -> list[Mapping[str, Any]]:
    """Final records of one main arm across seeds (names <prefix>_s<seed>)."""
    return [r for n, r in sorted(finals.items()) if n.rsplit("_s", 1)[0] == prefix and "_s" in n]


def paired(
    finals: Mapping[str, Mapping[str, Any]], a: str, b: str, key: str
) -> tuple[float | None, float | None, int]:
    """Mean and SE of (a - b) over the seeds both arms have."""
    ra = {r["seed"]: r for r in by_arm(finals, a)}
    rb = {r["seed"]: r for r in by_arm(finals, b)}
    diffs = [ra[s][key] - rb[s][key] for s in sorted(set(ra) & set(rb))]
    m, se = mean_se(diffs)
    return m, se, len(diffs)


def mde_text(se: float | None) -> str:
    """The minimum detectable effect (two-sided 5%, power 80%) at a standard error, as report text."""
    from gadjax.eval.paired import min_detectable_effect

    return "MDE n/a" if se is None or not math.isfinite(se) else f"MDE {min_detectable_effect(se):.3f}"


def _prompt_rates(record: Mapping[str, Any], key: str) -> list[float] | None:
    rates = (record.get("per_prompt") or {}).get(key)
    return list(rates) if rates else None


def prompt_paired(
    finals: Mapping[str, Mapping[str, Any]], a: str, b: str, key: str = "marker_rate"
) -> list[dict[str, Any]]:
    """``a`` vs ``b`` paired BY PROMPT on the held-out prompts (both evaluated on the same prompts, several
    samples per prompt: the per-prompt rates of ``key``): one comparison per seed both arms have, then
    "pooled" (each prompt's rate averaged over those seeds first, so prompts stay the unit). Each is
    gadjax.eval.paired.paired_difference (mean a - b, SE, paired t-test p) plus its minimum detectable
    effect (gadjax.eval.paired.min_detectable_effect) at that SE."""
    from gadjax.eval.paired import min_detectable_effect, paired_difference

    ra = {r["seed"]: _prompt_rates(r, key) for r in by_arm(finals, a)}
    rb = {r["seed"]: _prompt_rates(r, key) for r in by_arm(finals, b)}
    seeds = [s for s in sorted(set(ra) & set(rb)) if ra[s] and rb[s] and len(ra[s]) == len(rb[s]) > 1]
    out = []
    for label, x, y in [(f"seed {s}", ra[s], rb[s]) for s in seeds] + (
        [("pooled", np.mean([ra[s] for s in seeds], 0), np.mean([rb[s] for s in seeds], 0))]
        if len(seeds) > 1
        else []
    ):
        d = paired_difference(x, y)
        out.append({"what": label, **d, "mde": min_detectable_effect(d["se"])})
    return out
