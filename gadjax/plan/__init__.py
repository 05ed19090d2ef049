"""Compile-only memory plan: will this config fit a TPU slice? Answered on a CPU host, no TPU needed.

    python -m gadjax.plan --config configs/v5p.py [--topology v5p-64] [--config.key=value ...]

With the `tpu` extra installed (jax[tpu] brings libtpu), `jax.experimental.topologies` describes the
devices of a TPU slice that does not exist here; every program of a GAD step is lowered over a mesh of
those devices from ABSTRACT inputs (jax.eval_shape: no parameter is ever allocated) and compiled for
that chip, as MaxText's train_compile does. XLA's own `memory_analysis` (per chip) and `cost_analysis`
come back; a program that cannot fit fails to compile with RESOURCE_EXHAUSTED.

Programs (the device side of one SPEC.md gad step):
  rollout    the sampler's prefill + decode program: B prompts x N samples, P + R tokens of KV cache
  ref_logp   the frozen reference's log-probs of the B*N samples (in micro-batches of the G step's size)
  d_step     the discriminator step: teacher responses vs the N student samples per prompt
  g_step     the GRPO policy step over B*N rows with train.micro_batches_g micro-batches

All long-lived state (G and D TrainStates, the reference parameters) stays in HBM for the whole run, so
a program fits only if its own peak (arguments + outputs - aliased + temporaries + code) PLUS the
long-lived state it does not take as an argument fits the chip: XLA only checks the first part; this
package checks both and raises `PlanDoesNotFitError` naming the numbers and what to change.

Modules, one job each: topology (chip table, slice names, libtpu devices), state (the abstract run),
programs (the step's programs and their abstract arguments), run (compile and check the fit: run_plan),
analysis (per-chip bytes and FLOPs), oom (XLA's out-of-memory text and advice), report (the table),
cli (main and the command line; __main__ for `python -m gadjax.plan`), errors, gpu (the same plan for a
box of N GPUs, `--topology 8xh100`: compiled for N TPU chips, checked against the GPUs' memory).
"""

from __future__ import annotations

from gadjax.plan.analysis import model_flops_per_step, our_breakdown
from gadjax.plan.cli import main
from gadjax.plan.errors import PlanDoesNotFitError, PlanError
from gadjax.plan.oom import advice, parse_oom
from gadjax.plan.programs import PROGRAMS, ProgramSpec, program_specs
from gadjax.plan.report import format_report
from gadjax.plan.run import make_plan_mesh, run_plan, validate_for_plan
from gadjax.plan.state import AbstractRun, build_abstract, model_config_of, per_chip_bytes, with_shardings
from gadjax.plan.topology import CHIPS, ChipSpec, GiB, Topology, parse_topology, topology_devices

__all__ = [
    "CHIPS",
    "PROGRAMS",
    "AbstractRun",
    "ChipSpec",
    "GiB",
    "PlanDoesNotFitError",
    "PlanError",
    "ProgramSpec",
    "Topology",
    "advice",
    "build_abstract",
    "format_report",
    "main",
    "make_plan_mesh",
    "model_config_of",
    "model_flops_per_step",
    "our_breakdown",
    "parse_oom",
    "parse_topology",
    "per_chip_bytes",
    "program_specs",
    "run_plan",
    "topology_devices",
    "validate_for_plan",
    "with_shardings",
]
