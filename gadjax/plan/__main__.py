"""The command line of the compile-only memory plan (will this config fit a TPU slice? no TPU needed):

    python -m gadjax.plan --config configs/v5p.py [--topology v5p-64] [--config.key=value ...]
    python -m gadjax.plan --config configs/gpu.py --topology 8xh100     # a GPU box (gadjax/plan/gpu.py)

Prints the per-chip table and one JSON line; exits 1 with the reason when the plan fails or does not fit.
"""

from __future__ import annotations

from gadjax.plan.cli import _cli
from gadjax.plan.programs import PROGRAMS

if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from gadjax.cli import quiet_tpu_start

    quiet_tpu_start()  # no libtpu start-up noise on a host without a TPU (describing one needs none)

    config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=False)
    flags.DEFINE_string(
        "topology",
        "",
        "TPU slice (v5p-64, v4-8, v5e-16, v6e-8, v5:2x4x4) or GPU box (8xh100, 8xh200, 8xa100; "
        "gadjax/plan/gpu.py) (default: config.plan.topology, else v5p-8)",
    )
    flags.DEFINE_string("programs", ",".join(PROGRAMS), f"comma-separated subset of {PROGRAMS}")
    flags.DEFINE_string("profile", "paper", "length mix (gadjax.data.lengths): paper | gad_student | cpu")
    flags.mark_flags_as_required(["config"])
    app.run(_cli)
