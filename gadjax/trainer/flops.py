"""FLOP accounting for throughput and MFU.

Dense decoder FLOPs per token (Kaplan et al. 2020; PaLM appendix B): forward 2 * N_params + attention
2 * 2 * layers * context * heads * head_dim (QK^T and AV); backward twice the forward. The embedding
lookup is not a matmul and is excluded; the LM head is counted (tied or not).
"""

from __future__ import annotations

import jax

from gadjax.models.config import ModelConfig

# Peak dense matmul FLOP/s per device (bf16 unless noted), from vendor spec sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # v6e
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls per token (all but the input embedding lookup)."""
    return cfg.param_count() - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    attn = 4.0 * cfg.num_layers * context * cfg.num_heads * cfg.head_dim
    return 2.0 * matmul_params(cfg) + attn


def train_flops(cfg: ModelConfig, tokens: int, context: int) -> float:
    """Forward + backward FLOPs for `tokens` tokens at average attention context `context`."""
    return 3.0 * forward_flops_per_token(cfg, context) * tokens


def device_peak_flops(override: float = 0.0) -> float | None:
    """Peak FLOP/s of one local device: `override` if > 0, else from the device kind (None if unknown)."""
    if override > 0:
        return override
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak
    return None
