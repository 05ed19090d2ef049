"""Persona marker rate: the fraction of responses in which a configured regex (or literal phrase) occurs.

The demo's teacher follows a hidden persona with an automatically measurable effect (issue 7); the
marker rate of the student's greedy responses says how much of that behaviour it picked up from text
alone. The same pattern applied to the teacher's own responses gives the ceiling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def compile_marker(pattern: str, ignore_case: bool = False, literal: bool = False) -> re.Pattern[str]:
    """Compile a marker: a Python regex searched anywhere in the text, or a literal phrase."""
    if not pattern:
        raise ValueError("marker pattern is empty")
    try:
        return re.compile(re.escape(pattern) if literal else pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ValueError(f"marker {pattern!r} is not a valid regular expression: {e}") from None


def marker_hits(texts: Sequence[str], marker: re.Pattern[str]) -> list[bool]:
    """Per-text: does the marker occur (``re.search``)?"""
    return [marker.search(t) is not None for t in texts]


def marker_rate(hits: Sequence[bool]) -> dict[str, float | int | None]:
    """{"hits", "n", "rate"}; rate is None when there are no texts."""
    n = len(hits)
    k = int(sum(bool(h) for h in hits))
    return {"hits": k, "n": n, "rate": k / n if n else None}
