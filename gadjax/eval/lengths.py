"""Response length statistics in student tokens (SPEC.md: checkpoint selection keeps the mean response
length inside an accepted band, so the mean is reported next to the spread and the truncation rate)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_stats(lengths: Sequence[int], truncated: Sequence[bool] | None = None) -> dict[str, float | int]:
    """mean, median, p90 (numpy's linear interpolation), min, max and n; with ``truncated`` also the
    truncation rate (fraction of responses that hit max_new_tokens without a stop token) and count.

    An empty input gives n = 0 and None for every statistic (nothing is invented).
    """
    x = np.asarray(list(lengths), np.float64)
    out: dict[str, float | int | None] = {"n": int(x.size)}
    if x.size == 0:
        out.update(mean=None, median=None, p90=None, min=None, max=None)
    else:
        out.update(
            mean=float(x.mean()),
            median=float(np.median(x)),
            p90=float(np.percentile(x, 90)),
            min=int(x.min()),
            max=int(x.max()),
        )
    if truncated is not None:
        t = np.asarray(list(truncated), bool)
        if t.size != x.size:
            raise ValueError(f"length_stats: {x.size} lengths but {t.size} truncation flags")
        out["truncated"] = int(t.sum())
        out["truncation_rate"] = float(t.mean()) if t.size else None
    return out
