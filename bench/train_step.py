"""Policy-step throughput: gadjax's GRPO policy step vs transformers + PyTorch eager, same shape, same run.

Shape: SmolLM2-135M (llama, 30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152, tied
embeddings), random init, float32, B=4 sequences x 256 tokens (prompt P + response R), CPU.

- gadjax: `gadjax.algo.steps.make_policy_step` (chunked log-probs, PPO clip + k3 KL, global-norm clip,
  AdamW), jitted with the state donated, on one CPU device.
- torch_eager: the peer doing the same work: `LlamaForCausalLM` backbone forward, LM head on the R
  response positions, log-softmax gather, the same PPO-clip + KL loss, backward, clip_grad_norm_, AdamW.
- matmul_peak: this machine's f32 matmul throughput (jax and torch, 2048^2 GEMM; the larger counts).

FLOPs are the model's (6 x params x tokens for the matmuls a token goes through, + attention), the same
count for both, so achieved FLOP/s and the fraction of the matmul peak compare directly. Prints one JSON
line. Usage: .venv/bin/python bench/train_step.py [--steps 3] [--prompt 32] [--response 224]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.shapes import SMOLLM2  # noqa: E402


def model_flops(b: int, p: int, r: int) -> float:
    """fwd+bwd FLOPs of one policy step: 6 x (layer matmul params) x tokens + LM head on R positions
    + attention (QK^T and PV, full T x T as both implementations compute it)."""
    h, m, layers, v = SMOLLM2["hidden_size"], SMOLLM2["intermediate_size"], 30, SMOLLM2["vocab_size"]
    d = h // SMOLLM2["num_attention_heads"]
    q_o = 2 * h * h
    kv = 2 * h * SMOLLM2["num_key_value_heads"] * d
    per_layer = q_o + kv + 3 * h * m
    t = p + r
    dense = 6 * layers * per_layer * b * t
    head = 6 * h * v * b * r
    attn = 3 * layers * b * 2 * 2 * t * t * h
    return float(dense + head + attn)


def batch_numpy(b: int, p: int, r: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    v = SMOLLM2["vocab_size"]
    return {
        "prompt_ids": rng.integers(0, v, (b, p), dtype=np.int32),
        "prompt_mask": np.ones((b, p), np.int32),
        "response_ids": rng.integers(0, v, (b, r), dtype=np.int32),
        "response_mask": np.ones((b, r), np.int32),
        "advantages": rng.standard_normal(b).astype(np.float32),
        "ref_logprobs": (-11.0 + 0.1 * rng.standard_normal((b, r))).astype(np.float32),
    }


def time_steps(step, steps: int) -> float:
    step()  # compile / warm up
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def bench_gadjax(batch, steps: int, remat: str, chunk: int) -> float:
    import jax
    from flax import nnx

    from gadjax.algo.optim import make_optimizer
    from gadjax.algo.steps import PolicyLossConfig, TrainState, make_policy_step
    from gadjax.models.config import ModelConfig
    from gadjax.models.decoder import Decoder

    mc = ModelConfig.from_hf_dict(SMOLLM2)
    graphdef, params = nnx.split(Decoder(mc, rngs=nnx.Rngs(0), remat=remat), nnx.Param)
    opt = make_optimizer(1e-6)
    state = TrainState.create(params, opt)
    fn = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig(), chunk_size=chunk), donate_argnums=(0,))
    dev = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    key = jax.random.key(0)
    box = [state]

    def one():
        box[0], metrics = fn(box[0], dev, key)
        float(metrics["loss"])  # block

    return time_steps(one, steps)


def gadjax_breakdown(batch, steps: int, remat: str, chunk: int) -> dict[str, float]:
    """Seconds of the policy step's parts: backbone forward, + chunked log-probs, + backward; the update
    and its floor (update_breakdown)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gadjax.algo.steps import concat_sequence, sequence_logprobs
    from gadjax.models.config import ModelConfig
    from gadjax.models.decoder import Decoder

    mc = ModelConfig.from_hf_dict(SMOLLM2)
    graphdef, params = nnx.split(Decoder(mc, rngs=nnx.Rngs(0), remat=remat), nnx.Param)
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    args = (b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"])

    def backbone(p):
        ids, mask, pos = concat_sequence(*args)
        return jnp.sum(nnx.merge(graphdef, p)(ids, pos, mask)[0])

    def logp(p):
        return jnp.sum(sequence_logprobs(nnx.merge(graphdef, p), *args, chunk_size=chunk)[0])

    def full_logits(p):  # unchunked reference: [B, R, V] logits at once
        m = nnx.merge(graphdef, p)
        ids, mask, pos = concat_sequence(*args)
        h = m(ids, pos, mask)[0][:, args[0].shape[1] - 1 : -1]
        lg = m.logits(h)
        return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(lg), args[2][..., None], -1))

    out = {}
    for name, fn in (
        ("forward_backbone", jax.jit(backbone)),
        ("forward_logprobs", jax.jit(logp)),
        ("fwd_bwd_backbone", jax.jit(jax.grad(backbone))),
        ("fwd_bwd_logprobs", jax.jit(jax.grad(logp))),
        ("fwd_bwd_full_logits", jax.jit(jax.grad(full_logits))),
    ):
        out[name] = time_steps(lambda fn=fn: jax.block_until_ready(fn(params)), steps)
    out.update(update_breakdown(params, steps))
    return out


def update_breakdown(params, steps: int) -> dict[str, float]:
    """Seconds of the policy step's update (global-norm clip + AdamW + the non-finite guard, as
    `steps._apply_update` runs it) and of its floor: one jitted pass that reads params, grads and both
    moments and writes params and moments (donated), the least memory traffic any AdamW can do."""
    import jax
    import jax.numpy as jnp

    from gadjax.algo.optim import make_optimizer
    from gadjax.algo.steps import TrainState, _apply_update

    opt = make_optimizer(1e-6)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    fresh = lambda: jax.tree.map(jnp.copy, TrainState.create(params, opt))
    update = jax.jit(lambda st, g: _apply_update(st, jnp.float32(1.0), g, opt), donate_argnums=(0,))

    def floor_pass(pmv, g):
        p, m, v = pmv
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        p = jax.tree.map(lambda p, m, v: p - 1e-6 * m * jax.lax.rsqrt(v + 1e-16), p, m, v)
        return p, m, v

    floor = jax.jit(floor_pass, donate_argnums=(0,))
    box = {"state": fresh(), "pmv": jax.tree.map(jnp.copy, (params, params, params))}

    def run_update():
        box["state"], metrics = update(box["state"], grads)
        jax.block_until_ready((box["state"], metrics))

    def run_floor():
        box["pmv"] = floor(box["pmv"], grads)
        jax.block_until_ready(box["pmv"])

    return {"update": time_steps(run_update, steps), "update_floor": time_steps(run_floor, steps)}


def bench_torch(batch, steps: int, p: int) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in SMOLLM2.items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    ids = torch.cat([t["prompt_ids"], t["response_ids"]], 1).long()
    mask = torch.cat([t["prompt_mask"], t["response_mask"]], 1).long()
    resp = t["response_ids"].long()
    r = resp.shape[1]
    rmask = t["response_mask"].float()

    def one():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[:, p - 1 : p - 1 + r]).float()
        logp = torch.log_softmax(logits, -1).gather(-1, resp[..., None])[..., 0]
        ratio = torch.exp(logp - logp.detach())
        adv = t["advantages"][:, None]
        pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2))
        kl_log = t["ref_logprobs"] - logp
        k3 = torch.exp(kl_log) - kl_log - 1
        loss = ((pg + 0.001 * k3) * rmask).sum() / rmask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
        opt.step()
        float(loss)

    return time_steps(one, steps)


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import torch

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    jax_g = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    x = torch.ones(n, n)
    torch.mm(x, x)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(x, x)
    torch_g = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    return {"jax": jax_g, "torch": torch_g}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--response", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="also time the gadjax step's parts")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    b, p, r = args.batch, args.prompt, args.response
    batch = batch_numpy(b, p, r)
    flops = model_flops(b, p, r)
    peak = matmul_peak_gflops()
    peak_g = max(peak.values())
    tokens = b * (p + r)
    out = {
        "bench": "train_step",
        "shape": dict(model="SmolLM2-135M (random init)", batch=b, prompt=p, response=r, dtype="float32"),
        "model_gflop_per_step": flops / 1e9,
        "matmul_peak_gflops": peak,
    }
    runs = {"gadjax": lambda: bench_gadjax(batch, args.steps, args.remat, args.chunk)}
    if not args.skip_torch:
        runs["torch_eager"] = lambda: bench_torch(batch, args.steps, p)
    for name, fn in runs.items():
        s = fn()
        # Re-measure the peak after each run: on a shared host the load changes; keep the best seen.
        again = matmul_peak_gflops()
        peak = {k: max(v, again[k]) for k, v in peak.items()}
        peak_g = max(peak.values())
        out["matmul_peak_gflops"] = peak
        out[name] = {
            "s_per_step": s,
            "tokens_per_s": tokens / s,
            "gflops": flops / s / 1e9,
        }
    for name in runs:
        out[name]["fraction_of_matmul_peak"] = out[name]["gflops"] / peak_g
    if args.breakdown:
        out["gadjax_breakdown_s"] = gadjax_breakdown(batch, args.steps, args.remat, args.chunk)
    if "torch_eager" in out:
        out["gadjax_vs_torch_eager_speedup"] = out["torch_eager"]["s_per_step"] / out["gadjax"]["s_per_step"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
