"""Paired comparisons by prompt (issue 27): two models evaluated on the same prompts are compared prompt by
prompt, not as independent samples, and every table states the smallest effect its standard error can
detect.

- ``mcnemar``: two binary outcomes per prompt (e.g. marker hit of model A and of model B): the exact
  McNemar test is a binomial test of the discordant pairs against 1/2 (scipy.stats.binomtest), with its
  mid-p variant (less conservative; Fagerland, Lydersen and Laake 2013).
- ``paired_difference``: a per-prompt score for each model (e.g. the rate over several samples of one
  prompt): mean difference, its SE (std of the differences, ddof 1, / sqrt n) and the paired t-test.
- ``min_detectable_effect``: (z_{1-alpha/2} + z_{power}) x SE, the two-sided normal-approximation MDE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes ``a[i]``, ``b[i]`` (same prompt i). Returns
    {n, rate_a, rate_b, diff (rate_a - rate_b), n_a_only, n_b_only, p_value (exact, two-sided), mid_p}."""
    from scipy.stats import binom, binomtest

    x, y = np.asarray(a, bool), np.asarray(b, bool)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError("mcnemar: a and b must be equally long, non-empty 1-D sequences")
    n10, n01 = int((x & ~y).sum()), int((~x & y).sum())
    m = n10 + n01
    if m == 0:
        p = mid = 1.0
    else:
        k = min(n10, n01)
        p = float(binomtest(k, m, 0.5).pvalue)
        # Two-sided mid-p: twice the one-sided tail with half the observed point's probability.
        mid = float(min(1.0, 2 * (binom.cdf(k, m, 0.5) - 0.5 * binom.pmf(k, m, 0.5))))
    return {
        "n": int(len(x)),
        "rate_a": float(x.mean()),
        "rate_b": float(y.mean()),
        "diff": float(x.mean() - y.mean()),
        "n_a_only": n10,
        "n_b_only": n01,
        "p_value": p,
        "mid_p": mid,
    }


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over prompts, its SE and the paired t-test (scipy.stats.ttest_rel)."""
    from scipy.stats import ttest_rel

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("paired_difference: a and b must be equally long 1-D sequences of >= 2 values")
    d = x - y
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    p = float(ttest_rel(x, y).pvalue) if se > 0 else (1.0 if d.mean() == 0 else 0.0)
    return {"n": int(len(d)), "diff": float(d.mean()), "se": se, "p_value": p}


def min_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided z-test at level ``alpha`` detects with ``power``, given
    the estimate's standard error: (z_{1-alpha/2} + z_{power}) x se (2.80 x se at 0.05 / 0.8)."""
    from scipy.stats import norm

    if not se >= 0:
        raise ValueError(f"min_detectable_effect: se={se} must be >= 0")
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)
