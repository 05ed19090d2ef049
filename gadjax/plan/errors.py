"""The plan's two errors: it could not run (PlanError), or a program does not fit (PlanDoesNotFitError)."""

from __future__ import annotations


class PlanError(RuntimeError):
    """The plan could not run (libtpu missing, unknown topology, bad mesh)."""


class PlanDoesNotFitError(PlanError):
    """A program (plus the long-lived state) needs more HBM per chip than the chip has."""
