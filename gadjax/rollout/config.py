"""How to sample (SamplingConfig) and the choices that depend on the devices (layer loop, decode slots).

Its own module so the programs (decode.py, continuous.py) and the Sampler that runs them (sampler.py) all
import it from below, without importing each other.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh

from gadjax.parallel.rules import Rules, named_sharding

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
LAYER_LOOPS = ("auto", "scan", "unrolled")
BATCHINGS = ("static", "continuous")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Hashable: it keys the compiled programs.

    temperature == 0 or greedy=True: greedy (argmax) decoding. top_k <= 0 and top_p >= 1 switch those
    filters off. stop_ids: a row stops after emitting any of them (the stop token is part of the
    response). pad_id fills response slots after the stop and the left padding added for bucketing.
    max_memory_bytes: per-device budget for KV cache + parameters + sampling buffers; None = the
    device's `bytes_limit` when jax reports one (GPU / TPU), else no check.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    n_samples: int = 1
    stop_ids: frozenset[int] = frozenset()
    pad_id: int = 0
    prompt_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    max_memory_bytes: int | None = None
    cache_dtype: str | None = None  # None = the model's compute dtype
    # Token draw: "inversion" (one uniform per row; fast) or "gumbel" (Gumbel-max over [rows, V]
    # noise; more robust to tiny logit differences across meshes). See gadjax.rollout.sampling.
    method: str = "inversion"
    # How the decode loop runs the layers: "scan" (the model's scanned forward), "unrolled" (per-layer
    # fused weights, gadjax.rollout.unrolled; fastest on CPU, holds a second copy of the weights
    # during the rollout) or "auto" = "unrolled" on a single CPU device, "scan" otherwise.
    layer_loop: str = "auto"
    # Generate the batch in this many chunks of prompts, one after another (the same compiled program for
    # each): only one chunk's KV cache and sampling buffers exist at a time. Must divide the prompt batch.
    # Rows get the same random draws as unchunked (gadjax.rollout.sampling.row_keys).
    micro_batches: int = 1
    # How rows share the decode loop (gadjax.rollout.continuous's module doc): "static" decodes all B*N rows
    # together until the last one stops; "continuous" decodes in `slots` fixed slots, and a slot whose row
    # stopped takes the next pending (prompt, sample), so the work follows the rows still generating.
    # Same key, same tokens either way (draws are keyed by (prompt, sample, position)).
    batching: str = "static"
    # Decode slots of a "continuous" rollout (per chunk of micro_batches); 0 = auto (see resolve_slots).
    slots: int = 0
    # Tail compaction of a "continuous" rollout: once the queue is empty and the live rows fit in half the
    # slots, they (with their caches) move into a loop over half as many slots, up to this many times
    # (gadjax.rollout.continuous); each level is one more decode body in the same program. 0 = off.
    tail_compaction: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_ids", frozenset(int(s) for s in self.stop_ids))
        object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.n_samples < 1:
            raise ValueError(f"SamplingConfig.n_samples={self.n_samples}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1]")
        if self.method not in ("inversion", "gumbel"):
            raise ValueError(f"SamplingConfig.method={self.method!r}: 'inversion' or 'gumbel'")
        if self.micro_batches < 1:
            raise ValueError(f"SamplingConfig.micro_batches={self.micro_batches}: must be >= 1")
        if self.layer_loop not in LAYER_LOOPS:
            raise ValueError(f"SamplingConfig.layer_loop={self.layer_loop!r}: one of {LAYER_LOOPS}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"SamplingConfig.batching={self.batching!r}: one of {BATCHINGS}")
        if self.slots < 0:
            raise ValueError(f"SamplingConfig.slots={self.slots}: must be >= 0 (0 = auto)")
        if self.tail_compaction < 0:
            raise ValueError(f"SamplingConfig.tail_compaction={self.tail_compaction}: must be >= 0 (0 = off)")
        if not self.prompt_buckets or self.prompt_buckets[0] < 1:
            raise ValueError(f"SamplingConfig.prompt_buckets={self.prompt_buckets}: need positive lengths")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    def bucket_for(self, length: int) -> int:
        """The smallest prompt bucket >= length."""
        for b in self.prompt_buckets:
            if b >= length:
                return b
        raise ValueError(
            f"prompt of {length} tokens is longer than the largest prompt bucket "
            f"{self.prompt_buckets[-1]}; add a bucket to SamplingConfig.prompt_buckets or truncate prompts"
        )


def resolve_layer_loop(layer_loop: str, mesh: Mesh | None) -> str:
    """Resolve "auto": "unrolled" on one CPU device (where it was measured faster), else "scan"."""
    if layer_loop != "auto":
        return layer_loop
    if mesh is None:
        return "unrolled" if jax.default_backend() == "cpu" else "scan"
    return "unrolled" if mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu" else "scan"


def batch_shards(mesh: Mesh | None, rules: Rules) -> int:
    """How many ways the rule table splits the "batch" axis on `mesh` (1 without one)."""
    if mesh is None:
        return 1
    size = mesh.devices.size
    return size // named_sharding(("batch",), (size,), mesh, rules).shard_shape((size,))[0]


def resolve_slots(slots: int, rows: int, multiple: int = 1) -> int:
    """Decode slots of a continuous rollout of `rows` (prompt, sample) rows: `slots`, or for 0 (auto) half
    the rows; never more than the rows; rounded up to a multiple of `multiple` (the mesh's batch shards)."""
    want = slots if slots > 0 else -(-rows // 2)
    want = max(1, min(want, rows))
    return -(-want // multiple) * multiple


def slot_levels(slots: int, tail_compaction: int, multiple: int = 1) -> tuple[int, ...]:
    """The slot counts a continuous rollout decodes with: `slots`, then halved up to `tail_compaction`
    times while the half stays a positive multiple of `multiple` (the mesh's batch shards, so every level
    shards evenly)."""
    levels = [slots]
    while len(levels) <= tail_compaction:
        half = levels[-1] // 2
        if half < multiple or half % multiple:
            break
        levels.append(half)
    return tuple(levels)
