"""How many decode iterations a rollout runs for given response lengths: static vs continuous batching.

Host-side numpy, no model: the same queue the programs run (gadjax.rollout.decode: every row of a chunk
until the longest ends; gadjax.rollout.continuous: FIFO rows into free slots, a row of length L holds its
slot for L - 1 iterations after its first token). gadjax.plan uses it to predict the rollout under a
length profile (gadjax.data.lengths); tests check it against the programs' own step counts.
"""

from __future__ import annotations

import heapq

import numpy as np


def static_steps(lengths: np.ndarray, chunks: int = 1) -> int:
    """Decode steps of the static program over `chunks` equal chunks of rows: each runs to its longest."""
    parts = np.array_split(np.asarray(lengths), chunks)
    return int(sum(max(int(p.max()) - 1, 0) for p in parts))


def continuous_steps(lengths: np.ndarray, slots: int, chunks: int = 1) -> int:
    """Iterations of the continuous program with `slots` slots over `chunks` equal chunks of rows."""
    total = 0
    for part in np.array_split(np.asarray(lengths), chunks):
        free_at = [0] * slots  # iteration at which each slot is free again (a min-heap)
        end = 0
        for length in part:
            if length <= 1:  # ended at its first token: never takes a slot
                continue
            start = heapq.heappop(free_at)
            finish = start + int(length) - 1
            heapq.heappush(free_at, finish)
            end = max(end, finish)
        total += end
    return total


def row_steps(lengths: np.ndarray, slots: int, chunks: int = 1) -> dict[str, int]:
    """Slot-steps (rows x steps computed) of both programs and the useful ones (tokens after the first)."""
    rows = len(lengths)
    return {
        "static": static_steps(lengths, chunks) * rows // chunks,
        "continuous": continuous_steps(lengths, slots, chunks) * slots,
        "useful": int(np.maximum(np.asarray(lengths) - 1, 0).sum()),
    }
