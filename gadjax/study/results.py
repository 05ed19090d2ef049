"""The study's bookkeeping: the resumable results file (every finished run, curve point and final
evaluation); the validation split is gadjax.demo.settings.split_validation (the demo selects on it too)."""

from __future__ import annotations

import json
import os
from typing import Any

from gadjax.demo.settings import split_validation

__all__ = ["Results", "split_validation"]


# ------------------------------------------------------------------------------------------- results
class Results:
    """Append-only JSONL of finished work: {"kind": "curve" | "final" | "selection" | "run", ...}. Records
    that name a "run" (curve points, the evaluation of its selected checkpoint) count only once that run's
    "run" record exists (an interrupted run is redone from the start)."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict[str, Any]] = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.records = [json.loads(line) for line in f if line.strip()]
        done = {r["run"] for r in self.records if r["kind"] == "run"}
        # Drop what runs that never finished recorded (curve points, a selected checkpoint's evaluation):
        # they are redone from the start.
        self.records = [
            r for r in self.records if r["kind"] == "run" or r.get("run", "") in done or "run" not in r
        ]
        self._rewrite()

    def _rewrite(self) -> None:
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        os.replace(self.path + ".tmp", self.path)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def run_done(self, run: str) -> bool:
        return any(r["kind"] == "run" and r["run"] == run for r in self.records)

    def final_done(self, name: str) -> bool:
        return any(r["kind"] == "final" and r["name"] == name for r in self.records)
