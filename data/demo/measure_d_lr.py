"""How fast does D become informative? D-only warmup runs on the demo's split, D's accuracy on VALIDATION
pairs (prompts D never trains on) every 4 steps, for several D learning rates and seeds (issue 27).

    .venv/bin/python data/demo/measure_d_lr.py --data runs/demo/data --lr 2e-5 1e-4 2e-4 --seeds 0 1 \
        --steps 16 --out /tmp/d_lr

--data: a demo directory's data/ (fit.jsonl: the training prompts, validation.jsonl: the validation
split; `make demo` writes both). Each run is configs/demo.py's "full" budget as the warmup stage with
every step a D-only step (G does not move), `optim_d.lr` = LR, and the trainer's own evaluation on
validation.jsonl every 4 steps (eval/disc_val_accuracy: fraction of (teacher, fresh student sample)
pairs D scores the teacher's higher; the C2ST is off to save time). Prints one JSON line per run:
{lr, seed, val: [[step, accuracy, score gap], ...], train_d_acc: per step}. Checkpoints are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # as the demo: no accelerator probing on a CPU machine

from gadjax.demo.stages import full_demo_config, stage_config, train_for_metrics, with_validation  # noqa: E402


def run_one(data: str, out: str, lr: float, seed: int, steps: int) -> dict:
    c = full_demo_config(REPO)
    # The demo's own validation evaluation (sampled as the teacher, D scoring each pair), every 4 steps.
    c = with_validation(c, "warmup", os.path.join(data, "validation.jsonl"), select=False)
    c.eval.every = 4
    c.eval.two_sample = False
    run_dir = os.path.join(out, f"lr{lr:g}_s{seed}")
    c = stage_config(c, "warmup", run_dir, steps, float(c.optim_g.lr))
    c.data.train = [os.path.join(data, "fit.jsonl")]
    c.train.d_only_steps = steps
    c.optim_d.lr = lr
    c.seed = seed
    c.export.hf = False
    c.metrics.progress = False
    records = train_for_metrics(c)
    val = [
        [m["step"], round(m["eval/disc_val_accuracy"], 3), round(m["eval/disc_val_score_gap"], 3)]
        for m in records
        if "eval/disc_val_accuracy" in m
    ]
    return {"lr": lr, "seed": seed, "val": val, "train_d_acc": [m.get("d_acc") for m in records]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join("runs", "demo", "data"))
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-5, 1e-4, 2e-4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default=os.path.join("runs", "d_lr"))
    args = ap.parse_args()
    for lr in args.lr:
        for seed in args.seeds:
            print(json.dumps(run_one(args.data, args.out, lr, seed, args.steps)), flush=True)


if __name__ == "__main__":
    main()
