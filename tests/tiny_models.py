"""The tiny decoder shape the model tests share (random init, compiles in seconds on CPU)."""

from __future__ import annotations

from gadjax.models.config import ModelConfig

# Llama-style, 2 layers, 4 query heads of 8 over 2 KV heads; a test overrides what it needs.
TINY = dict(
    model_type="llama",
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rms_norm_eps=1e-6,
    rope_theta=1e4,
)


def tiny_model_config(**overrides) -> ModelConfig:
    """:data:`TINY` as a :class:`ModelConfig`, with ``overrides`` (any ModelConfig field) applied."""
    return ModelConfig(**{**TINY, **overrides})
