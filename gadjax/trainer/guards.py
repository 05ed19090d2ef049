"""Run guards: non-finite steps (skip, then stop) and the reward-hacking watch of SPEC.md.

SPEC.md "Known failure mode": with a frozen discriminator, response length blew up; the authors' only
guards were the co-trained D, the KL term and length-aware checkpoint selection. So the trainer watches
response length and D accuracy and says so when they drift out of their configured bands.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts steps whose update was skipped (metric `skipped` = 1); raises after `max_bad` in a row."""

    def __init__(self, max_bad: int):
        self.max_bad = max_bad
        self.in_a_row = 0
        self.total = 0

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        skipped = [k for k, v in metrics.items() if k.endswith("skipped") and float(v) > 0]
        if not skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        log.warning("step %d: non-finite loss or gradient in %s: update skipped", step, ", ".join(skipped))
        if self.in_a_row >= self.max_bad:
            raise NonFiniteError(
                f"step {step}: {self.in_a_row} consecutive steps with non-finite loss or gradients "
                f"({', '.join(skipped)}); stopping. Check the data of these steps, lower the learning rate, "
                "or raise train.max_bad_steps."
            )


class DriftWatch:
    """Warns when the mean response length grows past `max_ratio` x its first-window value, or the
    rolling D accuracy leaves [d_acc_low, d_acc_high] (D too weak to be a reward, or saturated)."""

    def __init__(self, max_ratio: float, d_acc_low: float, d_acc_high: float, window: int):
        self.max_ratio, self.low, self.high, self.window = max_ratio, d_acc_low, d_acc_high, window
        self.lengths: collections.deque[float] = collections.deque(maxlen=window)
        self.accs: collections.deque[float] = collections.deque(maxlen=window)
        self.baseline: float | None = None
        self._first: list[float] = []

    def update(self, step: int, metrics: dict[str, Any]) -> list[str]:
        """Returns the warnings raised at this step (also logged)."""
        warnings = []
        if "response_length_mean" in metrics:
            length = float(metrics["response_length_mean"])
            self.lengths.append(length)
            if self.baseline is None:
                self._first.append(length)
                if len(self._first) >= self.window:
                    self.baseline = sum(self._first) / len(self._first)
            elif len(self.lengths) == self.window:
                mean = sum(self.lengths) / len(self.lengths)
                if mean > self.max_ratio * self.baseline:
                    warnings.append(
                        f"step {step}: mean response length {mean:.0f} is {mean / self.baseline:.2f}x its "
                        f"start ({self.baseline:.0f}): possible reward hacking (docs/recipe.md); check"
                        " samples"
                    )
        if "d_acc" in metrics:
            self.accs.append(float(metrics["d_acc"]))
            if len(self.accs) == self.window:
                acc = sum(self.accs) / len(self.accs)
                if acc < self.low:
                    warnings.append(
                        f"step {step}: D accuracy {acc:.2f} < {self.low}: the reward is near noise"
                    )
                elif acc > self.high:
                    warnings.append(
                        f"step {step}: D accuracy {acc:.2f} > {self.high}: D is saturated, the policy "
                        "gets little signal"
                    )
        for w in warnings:
            log.warning(w)
        return warnings
