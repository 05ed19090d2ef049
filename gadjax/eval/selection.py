"""Checkpoint selection: the best evaluation whose mean response length stays in an accepted band.

SPEC.md ("Checkpoint selection"): the paper evaluates every 50 steps and keeps the checkpoint with the best
judge score whose mean response length is within an accepted band, since GAD's reward oscillates around 0
by design and the last step is not the best one. `Selector` is that rule as pure bookkeeping: it is fed one
evaluation at a time (any metric dict) and says whether that evaluation is the new best; the caller keeps
the weights. The choice must be made on a validation split, never on the split that is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Selector:
    """Keeps the best in-band evaluation by ``metric`` (``mode`` "min" or "max").

    ``tiebreak``: further metric keys (same mode) compared when ``metric`` ties. ``length_band``:
    (low, high) multiples of ``reference_length`` (for example the teacher's mean response length on the
    validation split) that ``length_key`` must stay within; None accepts every length.
    """

    metric: str
    mode: str = "min"
    tiebreak: Sequence[str] = ()
    length_band: tuple[float, float] | None = None
    reference_length: float | None = None
    length_key: str = "length_mean"
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"selection mode {self.mode!r}: must be 'min' or 'max'")
        if self.length_band is not None:
            lo, hi = (float(x) for x in self.length_band)
            if not (0 <= lo <= hi) or self.reference_length is None or self.reference_length <= 0:
                raise ValueError(
                    f"selection length_band={self.length_band} needs 0 <= low <= high and a positive "
                    f"reference_length (got {self.reference_length})"
                )
            self.length_band = (lo, hi)

    def in_band(self, metrics: Mapping[str, Any]) -> bool:
        if self.length_band is None:
            return True
        length = float(metrics[self.length_key])
        lo, hi = self.length_band
        return lo * self.reference_length <= length <= hi * self.reference_length

    def _key(self, metrics: Mapping[str, Any]) -> tuple[float, ...]:
        sign = 1.0 if self.mode == "min" else -1.0
        vals = []
        for k in (self.metric, *self.tiebreak):
            if k not in metrics:
                raise KeyError(f"selection metric {k!r} is not among the evaluation's: {sorted(metrics)}")
            v = _number(metrics[k])
            vals.append(sign * v if math.isfinite(v) else math.inf)
        return tuple(vals)

    def consider(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Record one evaluation; True when it is the new best (strictly better; the earlier step wins
        ties, so a longer run never replaces an equally good earlier checkpoint)."""
        key = self._key(metrics)  # checks the metrics are there first
        ok = self.in_band(metrics)
        entry = {"step": int(step), "in_band": ok, self.metric: _number(metrics[self.metric])}
        if self.length_band is not None:
            entry[self.length_key] = float(metrics[self.length_key])
        self.history.append(entry)
        if not ok:
            return False
        if self.best is None or key < self.best["_key"]:
            self.best = {"step": int(step), "_key": key, "metrics": dict(metrics)}
            return True
        return False

    def state(self) -> dict[str, Any]:
        """What `restore` needs to continue the selection (JSON-serialisable): the history and the best."""
        best = None if self.best is None else {"step": self.best["step"], "metrics": self.best["metrics"]}
        return {"history": list(self.history), "best": best}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state()` (e.g. read back from selection.json on resume)."""
        self.history = list(state.get("history", []))
        best = state.get("best")
        self.best = None
        if best is not None:
            self.best = {
                "step": int(best["step"]),
                "_key": self._key(best["metrics"]),
                "metrics": dict(best["metrics"]),
            }

    def summary(self) -> dict[str, Any]:
        """What was chosen and why (for selection.json / a results record)."""
        value = None if self.best is None else _number(self.best["metrics"][self.metric])
        return {
            "metric": self.metric,
            "mode": self.mode,
            "tiebreak": list(self.tiebreak),
            "length_band": list(self.length_band) if self.length_band else None,
            "reference_length": self.reference_length,
            "selected_step": None if self.best is None else self.best["step"],
            # None when nothing was selected or the metric was not computed (e.g. a C2ST skipped for too
            # few rows: the first in-band evaluation is kept).
            "selected_value": value if value is not None and math.isfinite(value) else None,
            "candidates": len(self.history),
            "out_of_band_steps": [h["step"] for h in self.history if not h["in_band"]],
        }


def _number(v: Any) -> float:
    """A metric as a float; None (e.g. a judge score with every item failed) is NaN: it never wins."""
    return math.nan if v is None else float(v)
