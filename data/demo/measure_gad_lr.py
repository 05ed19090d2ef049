"""Which gad learning rate moves the student toward the teacher? gad runs from one warmup run, the demo's
validation evaluation every 4 steps, for several generator learning rates and seeds (issue 27).

    .venv/bin/python data/demo/measure_gad_lr.py --demo runs/demo --lr 6e-6 2e-5 --seeds 0 --out /tmp/gad_lr

--demo: a `make demo` directory (data/fit.jsonl and data/validation.jsonl: the training prompts and the
validation split; warmup/: the warmup run gad starts from, G, D and the KL reference). Each run is
configs/demo.py's "full" budget as the gad stage (its step count unless --steps), ``optim_g.lr`` = LR,
with the trainer's own evaluation on validation.jsonl every 4 steps: the C2ST accuracy (an n-gram
classifier, 0.5 = indistinguishable) of the student's samples vs the teacher's, their mean length, and
D's accuracy on the same pairs. Only validation prompts are evaluated; the held-out split is not read.
Prints one JSON line per run: {lr, seed, set, val: [[step, c2st, c2st_se, disc_val_accuracy, length], ...]}.
Checkpoints are deleted. ``--set KEY=VALUE`` (repeatable) overrides the gad stage's config, e.g. the D
settings tried to keep D informative during gad (issue 27): ``--set train.d_updates=4 --set optim_d.lr=5e-4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # as the demo: no accelerator probing on a CPU machine

from gadjax.demo.stages import (  # noqa: E402
    full_demo_config,
    set_config_value,
    stage_config,
    train_for_metrics,
    with_validation,
)


def _override(c, assignment: str) -> str:
    """Apply one ``KEY=VALUE`` (a dotted config key; the value parsed as its current value's type)."""
    key, sep, value = assignment.partition("=")
    try:
        current = c[key]  # ConfigDict resolves a dotted key
    except KeyError:
        current = None
    if not sep or current is None:
        raise SystemExit(f"--set {assignment!r}: expected KEY=VALUE with KEY a config key")
    parsed = value.lower() in ("1", "true") if isinstance(current, bool) else type(current)(value)
    set_config_value(c, key, parsed)
    return f"{key}={value}"


def run_one(demo: str, out: str, lr: float, seed: int, steps: int, sets: list[str]) -> dict:
    c = full_demo_config(REPO)
    data = os.path.join(demo, "data")
    c = with_validation(c, "gad", os.path.join(data, "validation.jsonl"), select=False)
    run_dir = os.path.join(out, f"lr{lr:g}_s{seed}" + "".join(f"_{a}" for a in sets))
    d_lr = float(c.demo.gad_d_lr)  # the gad stage's D lr (gadjax/demo/settings.py); --set may override
    c = stage_config(c, "gad", run_dir, steps, lr, init_from=os.path.join(demo, "warmup"), d_lr=d_lr)
    applied = [_override(c, a) for a in sets]
    c.data.train = [os.path.join(data, "fit.jsonl")]
    c.seed = seed
    c.export.hf = False
    c.metrics.progress = False
    records = train_for_metrics(c)
    shutil.rmtree(run_dir, ignore_errors=True)
    keys = ("eval/c2st_accuracy", "eval/c2st_se", "eval/disc_val_accuracy", "eval/length_mean")
    val = [[m["step"], *(round(m[k], 3) for k in keys)] for m in records if keys[0] in m]
    return {"lr": lr, "seed": seed, "set": applied, "val": val}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default=os.path.join("runs", "demo"))
    ap.add_argument("--lr", type=float, nargs="+", default=[6e-6, 2e-5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=0, help="gad steps (0 = the demo's)")
    ap.add_argument("--out", default=os.path.join("runs", "gad_lr"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="gad config override")
    args = ap.parse_args()
    steps = args.steps or int(full_demo_config(REPO).demo.gad_steps)
    for lr in args.lr:
        for seed in args.seeds:
            print(json.dumps(run_one(args.demo, args.out, lr, seed, steps, args.set)), flush=True)


if __name__ == "__main__":
    main()
