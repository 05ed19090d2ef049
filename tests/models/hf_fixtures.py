"""Tiny random Hugging Face checkpoints (PyTorch, float32) used as the reference in model tests."""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
# name -> (config class, model class, overrides). Qwen2 uses GQA 7:1 with q/k/v biases; Qwen3 has q/k norms
# and an explicit head_dim; Llama uses Llama-3 rope scaling and tied embeddings.
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True)),
    "qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=56),
    ),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=32, tie_word_embeddings=False)),
}


def make_hf_model(family: str, out_dir: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """Build a random HF model of `family`, perturb EVERY parameter (biases and norms included, which
    HF initialises to 0 / 1), save it with save_pretrained and return it in eval mode."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**BASE, **extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return model


def left_padded_batch(
    vocab: int, lengths: list[int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, mask, positions for a LEFT-padded batch with the given real lengths."""
    t = max(lengths)
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (len(lengths), t))
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        mask[i, t - n :] = 1
    ids = np.where(mask == 1, ids, 0)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return ids, mask, pos


def torch_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
        )
    return out.logits.float().numpy()
