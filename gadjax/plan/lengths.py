"""Real tokens per program: what fraction of a step's score and train passes is padding, padded vs packed.

    python -m gadjax.plan.lengths --config configs/v5p.py [--profile paper] [--steps 8] [--shards 8]

Each simulated step draws its rows from a length profile (gadjax.data.lengths: prompt and response token
counts like the paper's data) and lays them out as the trainer does:

- padded (train.packing=false): the data pipeline pads every prompt of the step to the ``data.buckets``
  bucket of its longest prompt (at 256 prompts the log-normal tail reaches the 2,048 cap almost every
  step), teacher responses to ``data.max_response_tokens`` and the rollout's samples to
  ``rollout.max_new_tokens`` (the rollout's output is cap-wide);
- packed (train.packing=true): gadjax.data.packing places the same rows (first-fit decreasing, groups
  whole) in micro-batches of [pack_rows, pack_length]; only the micro-batches that hold rows compute.

Per program (ref_logp and g_step share the G rows; d_step has the teacher rows and the samples) it
reports rows, tokens computed, real tokens and the real fraction, and for packing the micro-batches run
(mean over the steps), their power-of-two bucket and the worst case (every row at the caps). The compile-
only plan (gadjax.plan.run) uses these numbers for its FLOPs under the profile.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from gadjax.data import packing
from gadjax.data.batching import bucket_length
from gadjax.data.lengths import LengthProfile, get_profile

SCORED = ("ref_logp", "d_step", "g_step")


def _step_rows(c: ConfigDict, profile: LengthProfile, rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, n = c.data.batch_size, c.rollout.n_samples
    cap = lambda x, k: np.minimum(x, k)  # noqa: E731  the pipeline / rollout truncate at their caps
    return {
        "prompt": cap(profile.sample_prompts(rng, b), c.data.max_prompt_tokens),
        "teacher": cap(profile.sample_responses(rng, b), c.data.max_response_tokens),
        "student": cap(profile.sample_responses(rng, b * n), c.rollout.max_new_tokens),
    }


def program_tokens(c: ConfigDict, profile: LengthProfile, steps: int = 8, shards: int = 1, seed: int = 0):
    """Per program: padded and packed tokens computed, real tokens and micro-batches, mean over `steps`."""
    rng = np.random.default_rng(seed)
    n, b = c.rollout.n_samples, c.data.batch_size
    r_t, r_s = c.data.max_response_tokens, c.rollout.max_new_tokens
    g_shape, d_shape = packing.pack_shape(c, "policy", shards), packing.pack_shape(c, "disc", shards)
    acc: dict[str, dict[str, float]] = {k: {} for k in SCORED}

    def add(name: str, **vals: float) -> None:
        for k, v in vals.items():
            acc[name][k] = acc[name].get(k, 0.0) + v / steps

    for _ in range(steps):
        rows = _step_rows(c, profile, rng)
        pb = bucket_length(
            int(rows["prompt"].max()), c.data.max_prompt_tokens, c.data.buckets, c.data.min_bucket
        )
        p_rep = np.repeat(rows["prompt"], n)
        g_real = float(np.sum(p_rep + rows["student"]))
        g = packing.pack(p_rep, rows["student"], g_shape)
        g_packed = g.used * g_shape.rows * g_shape.length
        for name in ("ref_logp", "g_step"):
            add(name, padded=b * n * (pb + r_s), real=g_real, packed=g_packed, micro=g.used, bucket=g.micro)
        d_p = np.repeat(rows["prompt"], 1 + n)
        d_r = np.concatenate([rows["teacher"][:, None], rows["student"].reshape(b, n)], axis=1).reshape(-1)
        d = packing.pack(d_p, d_r, d_shape, group_size=1 + n)
        d_packed = d.used * d_shape.rows * d_shape.length
        d_padded = b * (pb + r_t) + b * n * (pb + r_s)
        add(
            "d_step",
            padded=d_padded,
            real=float(np.sum(d_p + d_r)),
            packed=d_packed,
            micro=d.used,
            bucket=d.micro,
        )
    out: dict[str, Any] = {}
    worst_row = packing.longest_row(c)
    for name, a in acc.items():
        shape = d_shape if name == "d_step" else g_shape
        group = 1 + n if name == "d_step" else 1
        n_rows = b * (1 + n) if name == "d_step" else b * n
        worst = packing.worst_case_micro(n_rows, worst_row, shape, group)
        out[name] = dict(
            rows=n_rows,
            padded_tokens=a["padded"],
            real_tokens=a["real"],
            real_fraction_padded=a["real"] / a["padded"],
            packed_tokens=a["packed"],
            real_fraction_packed=a["real"] / a["packed"],
            pack_rows=shape.rows,
            pack_length=shape.length,
            micro_batches=a["micro"],
            micro_bucket=a["bucket"],
            micro_worst=worst,
            micro_worst_bucket=packing.micro_bucket(worst),
        )
    return out


def format_table(stats: dict[str, Any]) -> str:
    head = (
        "| program | rows | padded tokens | real | real / padded | packed | real / packed | micro-batches |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        mt = {k: f"{s[k] / 1e6:.2f} M" for k in ("padded_tokens", "real_tokens", "packed_tokens")}
        lines.append(
            f"| {name} | {s['rows']} | {mt['padded_tokens']} | {mt['real_tokens']} "
            f"| {s['real_fraction_padded']:.1%} | {mt['packed_tokens']} | {s['real_fraction_packed']:.1%} "
            f"| {s['micro_batches']:.1f} (worst {s['micro_worst']}) |"
        )
    return "\n".join(lines)


def load_config(path: str, overrides: list[str]) -> ConfigDict:
    """``get_config()`` of a config file, with ``key=value`` overrides (Python literals, else strings)."""
    import ast
    import importlib.util

    spec = importlib.util.spec_from_file_location("gadjax_plan_lengths_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            value = text
        node = c
        *parents, leaf = key.removeprefix("config.").split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--profile", default="paper", help="gadjax.data.lengths profile: paper | gad_student | cpu"
    )
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--shards", type=int, default=8, help="the mesh's batch shards (data x fsdp): v5p-16 = 8")
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. train.pack_rows=64")
    args = ap.parse_args(argv)
    c = load_config(args.config, args.set)
    stats = program_tokens(c, get_profile(args.profile), args.steps, args.shards)
    print(format_table(stats))
    print(json.dumps({"profile": args.profile, "programs": stats}))
    return stats


if __name__ == "__main__":
    main()
