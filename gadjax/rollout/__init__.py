"""Rollout engine: KV-cache sampling of N responses per prompt with per-token log-probs."""

from gadjax.rollout.memory import MemoryEstimate, RolloutMemoryError
from gadjax.rollout.sampler import (
    RolloutOutput,
    Sampler,
    SamplingConfig,
    generate,
)

__all__ = ["MemoryEstimate", "RolloutMemoryError", "RolloutOutput", "Sampler", "SamplingConfig", "generate"]
