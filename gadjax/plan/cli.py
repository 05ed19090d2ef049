"""Entry points: `main` (also behind `gadjax.train --compile_only`) and the `python -m gadjax.plan` CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from gadjax.plan.errors import PlanError
from gadjax.plan.programs import PROGRAMS
from gadjax.plan.report import format_report
from gadjax.plan.run import run_plan


def main(
    config: ConfigDict,
    topology: str | None = None,
    programs: Sequence[str] = PROGRAMS,
    profile: str = "paper",
) -> dict[str, Any]:
    """Entry for `gadjax.train --compile_only`: run the plan, print the table and one JSON line.

    `topology` is a TPU slice (v5p-64) or a GPU box (8xh100: gadjax.plan.gpu)."""
    from gadjax.plan import gpu

    topology = topology or config.get("plan", {}).get("topology", "") or "v5p-8"
    log = lambda s: print(s, file=sys.stderr, flush=True)
    if gpu.is_gpu_box(topology):
        rep = gpu.run_gpu_plan(config, topology, programs, log=log, profile=profile)
        print(gpu.format_gpu_header(rep))
    else:
        rep = run_plan(config, topology, programs, log=log, profile=profile)
    print(format_report(rep))
    print(json.dumps({"plan": rep}, default=str))
    return rep


def _cli(argv: list[str]) -> None:
    from absl import flags

    t = flags.FLAGS
    rep_programs = [p.strip() for p in t.programs.split(",") if p.strip()]
    try:
        main(t.config, t.topology or None, rep_programs, t.profile)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
