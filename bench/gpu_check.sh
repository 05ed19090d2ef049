#!/usr/bin/env bash
# GPU check for gadjax: model parity tests on the GPU, then train-step MFU and sampler tokens/s for a
# 0.5B-class shape (Qwen2.5-0.5B config, random init, bf16 compute, f32 params). Prints one JSON line.
#
# Usage: bench/gpu_check.sh [--python PATH] [--skip-tests] [--no-install] [--batch N] [--seq N]
#                           [--prompts N] [--samples N] [--new-tokens N] [--help]
#   --python PATH     interpreter with gadjax and jax[cuda] (pip install -e '.[cuda]'; default:
#                     .venv/bin/python if present, else python3)
#   --skip-tests      do not run the parity tests (tests/models/test_decoder.py, test_discriminator.py,
#                     test_attention.py: the cudnn backend against the reference)
#   --no-install      the parity tests need the test extra (pytest, torch, accelerate); without this flag
#                     a missing one is installed with `pip install -e '.[test]'`, with it the check stops
#   --batch N         train-step rows (default 16)
#   --seq N           train-step tokens per row, prompt + response halves (default 1024)
#   --prompts N       sampler prompts (default 32)
#   --samples N       sampler samples per prompt (default 8)
#   --new-tokens N    sampler tokens generated per row (default 256)
# Exit status: 2 when no GPU is visible (nvidia-smi or jax) or, with --no-install, the test extra is
# missing; 1 when a test or the benchmark fails.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=""
SKIP_TESTS=0
NO_INSTALL=0
BATCH=16
SEQ=1024
PROMPTS=32
SAMPLES=8
NEW_TOKENS=256

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --no-install) NO_INSTALL=1; shift ;;
    --batch) BATCH="$2"; shift 2 ;;
    --batch=*) BATCH="${1#*=}"; shift ;;
    --seq) SEQ="$2"; shift 2 ;;
    --seq=*) SEQ="${1#*=}"; shift ;;
    --prompts) PROMPTS="$2"; shift 2 ;;
    --prompts=*) PROMPTS="${1#*=}"; shift ;;
    --samples) SAMPLES="$2"; shift 2 ;;
    --samples=*) SAMPLES="${1#*=}"; shift ;;
    --new-tokens) NEW_TOKENS="$2"; shift 2 ;;
    --new-tokens=*) NEW_TOKENS="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
done
for v in BATCH SEQ PROMPTS SAMPLES NEW_TOKENS; do
  if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_check: --$(echo "$v" | tr 'A-Z_' 'a-z-') must be a positive integer, got '${!v}'" >&2
    exit 64
  fi
done
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

# Fail fast without a GPU: nvidia-smi first (cheap), then jax's own view.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or lists none); run this on a GPU machine" >&2
  exit 2
fi
if ! JAX_PLATFORMS=cuda "$PY" -c 'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else 1)' \
    >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi sees a GPU but jax ($PY) does not; install jax with CUDA: pip install -e '.[cuda]'" >&2
  exit 2
fi
nvidia-smi -L >&2
"$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' >&2

# The parity tests compare against transformers' PyTorch models: they need the test extra.
if [[ "$SKIP_TESTS" == 0 ]] && ! "$PY" -c 'import pytest, torch, accelerate' >/dev/null 2>&1; then
  if [[ "$NO_INSTALL" == 1 ]]; then
    echo "gpu_check: the parity tests need the test extra (pytest, torch, accelerate): pip install -e '.[test]'" >&2
    exit 2
  fi
  echo "gpu_check: installing the test extra for the parity tests: $PY -m pip install -e '.[test]'" >&2
  if ! "$PY" -m pip install -q -e ".[test]" >&2; then
    echo "gpu_check: could not install the test extra; install it, or pass --skip-tests" >&2
    exit 1
  fi
fi

TESTS_STATUS="skipped"
if [[ "$SKIP_TESTS" == 0 ]]; then
  # Parity vs transformers (PyTorch on the CPU) with gadjax on the GPU; f32 matmuls at full precision
  # (the GPU's default f32 matmul uses TF32, ~1e-3 relative error, which the tolerances do not allow).
  if JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -x -p no:cacheprovider \
      tests/models/test_decoder.py tests/models/test_discriminator.py tests/models/test_attention.py \
      -m "not slow" >&2; then
    TESTS_STATUS="passed"
  else
    TESTS_STATUS="failed"
  fi
fi

JAX_PLATFORMS=cuda TESTS_STATUS="$TESTS_STATUS" "$PY" - "$BATCH" "$SEQ" "$PROMPTS" "$SAMPLES" "$NEW_TOKENS" <<'PYEOF'
import json, os, sys, time

import jax, jax.numpy as jnp, numpy as np
from flax import nnx

sys.path.insert(0, os.getcwd())
from configs.gpu import QWEN25_05B_INSTRUCT as HF
from gadjax.algo.optim import make_optimizer
from gadjax.algo.steps import PolicyLossConfig, TrainState, make_policy_step
from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder
from gadjax.rollout.sampler import Sampler, SamplingConfig

batch, seq, prompts, samples, new_tokens = (int(a) for a in sys.argv[1:6])
dev = jax.devices()[0]
kind = dev.device_kind
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
peak = next((v for k, v in PEAKS.items() if k in kind), None)
mc = ModelConfig.from_hf_dict(HF)
out = {"bench": "gpu_check", "device": kind, "jax": jax.__version__, "parity_tests": os.environ["TESTS_STATUS"],
       "model": "Qwen2.5-0.5B shape (random init)", "params": mc.param_count(), "peak_bf16_flops": peak}

# --- train step: GRPO policy step, bf16 compute, f32 params, full remat ---
p = r = seq // 2
model = Decoder(mc, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32, remat="full")
graphdef, params = nnx.split(model, nnx.Param)
opt = make_optimizer(1e-6)
state = TrainState.create(params, opt)
step = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig(), chunk_size=256), donate_argnums=(0,))
rng = np.random.default_rng(0)
b = {
    "prompt_ids": jnp.asarray(rng.integers(0, mc.vocab_size, (batch, p)), jnp.int32),
    "prompt_mask": jnp.ones((batch, p), jnp.int32),
    "response_ids": jnp.asarray(rng.integers(0, mc.vocab_size, (batch, r)), jnp.int32),
    "response_mask": jnp.ones((batch, r), jnp.int32),
    "advantages": jnp.asarray(rng.standard_normal(batch), jnp.float32),
    "ref_logprobs": jnp.full((batch, r), -11.0, jnp.float32),
}
key = jax.random.key(0)
for _ in range(2):
    state, m = step(state, b, key); float(m["loss"])
n = 5
t0 = time.perf_counter()
for _ in range(n):
    state, m = step(state, b, key)
float(m["loss"])
s = (time.perf_counter() - t0) / n
h, layers, d = mc.hidden_size, mc.num_layers, mc.head_dim
dense = mc.param_count() - mc.vocab_size * h  # the tied embedding is used once, as the LM head
flops = 6 * dense * batch * seq + 6 * h * mc.vocab_size * batch * r + 3 * layers * batch * 4 * seq * seq * mc.num_heads * d
out["train_step"] = {"rows": batch, "tokens_per_row": seq, "s_per_step": s, "tokens_per_s": batch * seq / s,
                     "model_tflops": flops / s / 1e12, "mfu": (flops / s / peak) if peak else None,
                     "mfu_note": "model FLOPs (no remat recompute) / dense bf16 peak"}
del state

# --- sampler: prefill + decode, N samples per prompt, no stop token (every row decodes new_tokens) ---
model = Decoder(mc, rngs=nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.8, n_samples=samples, prompt_buckets=(128,))
sampler = Sampler(model, cfg)
ids = rng.integers(0, mc.vocab_size, (prompts, 128)).astype(np.int32)
mask = np.ones_like(ids)
sampler.generate(ids, mask, jax.random.key(0))  # compile
t0 = time.perf_counter()
o = sampler.generate(ids, mask, jax.random.key(1))
s = time.perf_counter() - t0
gen = int(o.response_mask.sum())
out["sampler"] = {"prompts": prompts, "samples": samples, "prompt_tokens": 128, "new_tokens": new_tokens,
                  "seconds": s, "generated_tokens": gen, "tokens_per_s": gen / s}
print(json.dumps(out))
PYEOF
if [[ "$TESTS_STATUS" == "failed" ]]; then
  echo "gpu_check: parity tests FAILED on the GPU (output above)" >&2
  exit 1
fi
