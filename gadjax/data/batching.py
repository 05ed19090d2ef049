"""Length buckets and padding of tokenized rows into the batch layout of the shared contract.

    prompt_ids    int32 [B, P]  LEFT-padded with pad id
    prompt_mask   int32 [B, P]  1 on real tokens
    response_ids  int32 [B, R]  RIGHT-padded (EOS appended unless truncated)
    response_mask int32 [B, R]  1 on real tokens incl. EOS
    example_id    int64 [B]     row index in the source

Left-padding the prompt puts every response at column P of concat(prompt, response), so one slice
splits the two for the whole batch. Buckets limit the number of distinct shapes (each is one jit
compile on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def parse_buckets(spec: str) -> tuple[str, int]:
    """``"pow2"`` | ``"multiple:K"`` | ``"max"`` -> (kind, K)."""
    if spec in ("pow2", "max"):
        return spec, 0
    if spec.startswith("multiple:"):
        k = int(spec.split(":", 1)[1])
        if k < 1:
            raise ValueError(f"bucket multiple must be >= 1: {spec!r}")
        return "multiple", k
    raise ValueError(f"unknown bucket spec {spec!r} (pow2 | multiple:K | max)")


def bucket_length(n: int, max_len: int, spec: str = "pow2", min_len: int = 16) -> int:
    """Smallest bucket >= n (and >= min_len), capped at max_len.

    pow2: powers of two; multiple:K: multiples of K; max: always max_len.
    """
    kind, k = parse_buckets(spec)
    if n > max_len:
        raise ValueError(f"length {n} exceeds the maximum {max_len}")
    if kind == "max":
        return max_len
    n = max(n, min_len, 1)
    if kind == "pow2":
        b = 1 << (n - 1).bit_length()
    else:
        b = -(-n // k) * k
    return min(b, max_len)


def pad_left(seqs: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, length - len(s) :] = s
            mask[i, length - len(s) :] = 1
    return ids, mask


def pad_right(seqs: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def collate(
    elements: Sequence[dict[str, Any]],
    pad_id: int,
    max_prompt_tokens: int,
    max_response_tokens: int,
    buckets: str = "pow2",
    min_bucket: int = 16,
    with_response: bool = True,
) -> dict[str, np.ndarray]:
    """Pad tokenized elements (``prompt_ids`` / ``response_ids`` arrays) into one batch dict."""
    p = bucket_length(max(len(e["prompt_ids"]) for e in elements), max_prompt_tokens, buckets, min_bucket)
    prompt_ids, prompt_mask = pad_left([e["prompt_ids"] for e in elements], p, pad_id)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "example_id": np.asarray([e["example_id"] for e in elements], np.int64),
    }
    if with_response:
        r = bucket_length(
            max(len(e["response_ids"]) for e in elements), max_response_tokens, buckets, min_bucket
        )
        batch["response_ids"], batch["response_mask"] = pad_right(
            [e["response_ids"] for e in elements], r, pad_id
        )
    return batch


def pad_batch_to(
    batch: dict[str, np.ndarray], prompt_len: int, response_len: int | None, pad_id: int
) -> dict[str, np.ndarray]:
    """Widen a batch to P=prompt_len (more LEFT padding) and R=response_len (more RIGHT padding).

    Used to give every host the same shapes before assembling a global batch.
    """
    out = dict(batch)
    extra = prompt_len - batch["prompt_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"cannot shrink prompts from {batch['prompt_ids'].shape[1]} to {prompt_len}")
    if extra:
        out["prompt_ids"] = np.pad(batch["prompt_ids"], ((0, 0), (extra, 0)), constant_values=pad_id)
        out["prompt_mask"] = np.pad(batch["prompt_mask"], ((0, 0), (extra, 0)))
    if response_len is not None and "response_ids" in batch:
        extra = response_len - batch["response_ids"].shape[1]
        if extra < 0:
            raise ValueError(
                f"cannot shrink responses from {batch['response_ids'].shape[1]} to {response_len}"
            )
        if extra:
            out["response_ids"] = np.pad(batch["response_ids"], ((0, 0), (0, extra)), constant_values=pad_id)
            out["response_mask"] = np.pad(batch["response_mask"], ((0, 0), (0, extra)))
    return out


def positions(mask: np.ndarray) -> np.ndarray:
    """Positions of concat(prompt_mask, response_mask) per the contract: max(cumsum(mask) - 1, 0)."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
