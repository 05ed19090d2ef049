"""How many decode iterations a rollout runs for given response lengths: static vs continuous batching.

Host-side numpy, no model: the same queue the programs run (gadjax.rollout.decode: every row of a chunk
until the longest ends; gadjax.rollout.continuous: FIFO rows into free slots, a row of length L holds its
slot for L - 1 iterations after its first token, and the tail moves into fewer slots). gadjax.plan uses it
to predict the rollout under a length profile (gadjax.data.lengths); tests check it against the programs'
own step counts.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def static_steps(lengths: np.ndarray, chunks: int = 1) -> int:
    """Decode steps of the static program over `chunks` equal chunks of rows: each runs to its longest."""
    parts = np.array_split(np.asarray(lengths), chunks)
    return int(sum(max(int(p.max()) - 1, 0) for p in parts))


def _spans(lengths: np.ndarray, slots: int) -> list[tuple[int, int]]:
    """(first iteration, iteration its slot is free again) of every row that takes a slot, FIFO."""
    free_at = [0] * slots  # iteration at which each slot is free again (a min-heap)
    spans = []
    for length in lengths:
        if length <= 1:  # ended at its first token: never takes a slot
            continue
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + int(length) - 1)
        spans.append((start, start + int(length) - 1))
    return spans


def continuous_steps(lengths: np.ndarray, slots: int, chunks: int = 1) -> int:
    """Iterations of the continuous program with `slots` slots over `chunks` equal chunks of rows (tail
    compaction moves rows between slot batches; it does not change when they end)."""
    total = 0
    for part in np.array_split(np.asarray(lengths), chunks):
        total += max((finish for _, finish in _spans(part, slots)), default=0)
    return total


def continuous_slot_steps(lengths: np.ndarray, levels: Sequence[int], chunks: int = 1) -> int:
    """Slot-steps (slots x iterations) of the continuous program whose slot counts are `levels` (the
    slots, then the tail compaction's: gadjax.rollout.config.slot_levels). Before each iteration, once
    every row has started and the live rows fit the next level, the program moves to it (as many levels
    at once as fit). Exact on one batch shard; on several the program compacts within each shard's group
    of slots and waits until every group's live rows fit, so this is then a lower bound."""
    total = 0
    for part in np.array_split(np.asarray(lengths), chunks):
        spans = _spans(part, levels[0])
        if not spans:
            continue
        last_start = max(start for start, _ in spans)
        finishes = np.sort([finish for _, finish in spans])
        level = 0
        for i in range(int(finishes[-1])):
            # Live after iteration i - 1: rows whose slot is not free yet at i.
            live = len(finishes) - int(np.searchsorted(finishes, i, side="right"))
            while level + 1 < len(levels) and i > last_start and live <= levels[level + 1]:
                level += 1
            total += levels[level]
    return total


def row_steps(lengths: np.ndarray, levels: Sequence[int], chunks: int = 1) -> dict[str, int]:
    """Slot-steps (rows x steps computed) of both programs and the useful ones (tokens after the first);
    `levels`: the continuous program's slot counts (one entry: no tail compaction)."""
    rows = len(lengths)
    return {
        "static": static_steps(lengths, chunks) * rows // chunks,
        "continuous": continuous_slot_steps(lengths, levels, chunks),
        "useful": int(np.maximum(np.asarray(lengths) - 1, 0).sum()),
    }
