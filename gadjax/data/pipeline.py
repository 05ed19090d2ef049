"""The grain pipeline: rows -> chat-templated, tokenized, length-limited, bucketed, padded numpy batches.

Stages (per process; see DESIGN.md "The shape of the system")::

    source (random access)                         gadjax.data.sources
      -> this process's shard: rows [i::count]     (after trimming to a multiple of count)
      -> seeded shuffle, a different order per epoch; every row once per epoch (grain reseeds per epoch)
      -> repeat(num_epochs)
      -> render chat template + tokenize prompt    gadjax.data.tokenize (grain map; workers if any)
      -> [offline] tokenize teacher response       (grain map)
      -> [online]  teacher client prefetch + join, then tokenize response (main process)
      -> count / drop, bucket, pad, batch          gadjax.data.batching (main process)

Output of ``next(BatchIterator)``: a dict of numpy arrays for THIS process (local batch
``B = config.batch_size // process_count``)::

    prompt_ids    int32 [B, P]  LEFT-padded with pad id; the chat template with add_generation_prompt
    prompt_mask   int32 [B, P]  1 on real tokens
    response_ids  int32 [B, R]  RIGHT-padded teacher response, re-tokenized, EOS appended (unless truncated)
    response_mask int32 [B, R]  1 on real tokens incl. EOS
    example_id    int64 [B]     row index in the source (= teacher prompt id)

P and R are bucketed (``config.buckets``: pow2 | multiple:K | max, at least ``min_bucket``, capped at
``max_prompt_tokens`` / ``max_response_tokens``). With ``config.prompts_only`` there are no response
keys (evaluation prompts). For several hosts the bucket is per host: :func:`make_global_batch` pads to
the largest host's shape.

Resumable: ``BatchIterator.get_state()`` is a JSON-serialisable dict (grain iterator state at the last
consumed row + the counters); ``pipeline.iterator(state)`` / ``set_state(state)`` continue with exactly
the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any

import grain

from gadjax.data.batching import collate
from gadjax.data.rows import DataError
from gadjax.data.teacher_join import TeacherJoin
from gadjax.data.tokenize import RowEncoder
from gadjax.teacher.errors import TooManyFailedPrompts


@dataclasses.dataclass
class DataConfig:
    """Pipeline settings. ``batch_size`` is GLOBAL (all processes); each process builds its share."""

    batch_size: int = 8
    max_prompt_tokens: int = 2048  # SPEC.md reference hyperparameters
    max_response_tokens: int = 1536
    overlong_prompt: str = "truncate"  # truncate (keep the end) | drop
    overlong_response: str = "truncate"  # truncate (keep the start, no EOS) | drop
    buckets: str = "pow2"  # pow2 | multiple:K | max
    min_bucket: int = 16
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True  # training: only full batches
    prompts_only: bool = False  # evaluation prompts: no response needed, no response arrays
    worker_count: int = 0  # grain worker processes (needs absl flags parsed, see DESIGN.md)
    read_threads: int = 2
    prefetch_buffer: int = 256
    teacher_max_ahead: int = 64
    # Online teacher: more than this many prompts skipped because the teacher did not answer them
    # (dropped "teacher_failed", counted in the iterator state) raises TooManyFailedPrompts; -1 = no limit.
    teacher_max_failed: int = -1
    shard_drop_remainder: bool = True  # trim the source to a multiple of process_count (equal shards)


class DataStats:
    """Counters readable by the trainer (``as_dict()``); part of the iterator state."""

    COUNTERS = (
        "rows_read",
        "rows_batched",
        "batches",
        "prompt_truncated",
        "response_truncated",
        "prompt_tokens",
        "response_tokens",
        "prompt_pad_tokens",
        "response_pad_tokens",
        "teacher_rows",
        "teacher_cached",
        "teacher_finish_length",
        "remainder_dropped",
    )

    def __init__(self, static: dict[str, Any] | None = None):
        self.counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.dropped: collections.Counter[str] = collections.Counter()
        self.static = dict(static or {})  # source rows, bad rows skipped by reason, shard sizes

    def count_row(self, element: dict[str, Any]) -> None:
        c = self.counts
        c["rows_read"] += 1
        if element.get("dropped"):
            self.dropped[element["dropped"]] += 1
            return
        c["prompt_truncated"] += bool(element.get("prompt_truncated"))
        c["response_truncated"] += bool(element.get("response_truncated"))
        if element.get("from_teacher"):
            c["teacher_rows"] += 1
            c["teacher_cached"] += bool(element.get("teacher_cached"))
            c["teacher_finish_length"] += element.get("teacher_finish_reason") == "length"

    def count_batch(self, batch: dict[str, Any]) -> None:
        c = self.counts
        c["batches"] += 1
        c["rows_batched"] += len(batch["example_id"])
        real = int(batch["prompt_mask"].sum())
        c["prompt_tokens"] += real
        c["prompt_pad_tokens"] += batch["prompt_mask"].size - real
        if "response_mask" in batch:
            real = int(batch["response_mask"].sum())
            c["response_tokens"] += real
            c["response_pad_tokens"] += batch["response_mask"].size - real

    def as_dict(self) -> dict[str, Any]:
        shard = self.static.get("shard_rows") or 0
        return {
            **self.counts,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "epoch": self.counts["rows_read"] / shard if shard else 0.0,
            **self.static,
        }

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "dropped": dict(self.dropped)}

    def load(self, state: dict[str, Any]) -> None:
        self.counts = {**dict.fromkeys(self.COUNTERS, 0), **state["counts"]}
        self.dropped = collections.Counter(state["dropped"])


class _EncodeRow:
    """grain map: tokenize the prompt (and, offline, the response). Picklable for worker processes."""

    def __init__(self, encoder: RowEncoder, source: Any, encode_response: bool, prompts_only: bool):
        self.encoder, self.source = encoder, source
        self.encode_response, self.prompts_only = encode_response, prompts_only

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.encode_response and not self.prompts_only and record["response"] is None:
            where = self.source.where(record["example_id"]) if hasattr(self.source, "where") else "?"
            raise DataError(
                where,
                "field 'response' (or 'teacher_response') is missing and no teacher "
                "client was given (set prompts_only for evaluation prompts)",
                "missing_field",
            )
        element = self.encoder.encode_prompt(record)
        if self.encode_response and not self.prompts_only:
            element = self.encoder.encode_response(element)
        return element


class _GrainRows:
    """Offline row stream: the grain iterator itself (its state is the state after the last row)."""

    def __init__(self, make_parent, state):
        self._it = make_parent(state)

    def __next__(self):
        return next(self._it)

    def state(self) -> dict:
        return self._it.get_state()

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class DataPipeline:
    """Builds the per-process grain dataset; ``iterator(state)`` gives a resumable :class:`BatchIterator`.

    Args:
      source: a random-access source (``gadjax.data.sources``; anything with len / getitem returning
        records ``{example_id, messages, response}``).
      tokenizer: the student tokenizer (shared contract surface only).
      config: :class:`DataConfig`.
      teacher: optional teacher client with ``prefetch(items, max_ahead)``; rows without a response
        are answered by it (online mode). Without it every row needs a response (unless prompts_only).
      process_index / process_count: this host's shard; default jax.process_index() / process_count().
    """

    def __init__(
        self,
        source: Any,
        tokenizer: Any,
        config: DataConfig,
        teacher: Any | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if config.batch_size % process_count:
            raise ValueError(
                f"global batch_size {config.batch_size} is not divisible by process_count {process_count}"
            )
        self.source, self.tokenizer, self.config, self.teacher = source, tokenizer, config, teacher
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = config.batch_size // process_count
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.online = teacher is not None and not config.prompts_only
        self.encoder = RowEncoder(
            tokenizer,
            config.max_prompt_tokens,
            config.max_response_tokens,
            config.overlong_prompt,
            config.overlong_response,
        )
        n = len(source)
        shard_total = (n // process_count) * process_count if config.shard_drop_remainder else n
        self.shard_indices = range(process_index, shard_total, process_count)
        if len(self.shard_indices) == 0:
            raise ValueError(f"process {process_index} of {process_count} gets no rows from {source!r}")
        bad = getattr(source, "bad_rows", None)
        self._static = {
            "source_rows": n,
            "shard_rows": len(self.shard_indices),
            "rows_left_out_for_equal_shards": n - shard_total,
            "bad_rows_skipped": bad.total if bad is not None else 0,
            "bad_rows_by_reason": dict(bad.by_reason) if bad is not None else {},
        }
        self.dataset = self._build()

    def _build(self) -> grain.IterDataset:
        c = self.config
        ds = grain.MapDataset.source(self.source)
        if len(self.shard_indices) != len(self.source):
            s = self.shard_indices
            ds = ds[s.start : s.stop : s.step]
        if c.shuffle:
            ds = ds.shuffle(seed=c.seed)
        ds = ds.repeat(c.num_epochs)
        ds = ds.map(
            _EncodeRow(
                self.encoder, self.source, encode_response=not self.online, prompts_only=c.prompts_only
            )
        )
        it = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=c.read_threads, prefetch_buffer_size=c.prefetch_buffer)
        )
        if c.worker_count > 0:
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count))
        return it

    def _make_parent(self, state: dict | None):
        it = iter(self.dataset)
        if state is not None:
            it.set_state(state)
        return it

    def _open_rows(self, grain_state: dict | None):
        if self.online:
            where = getattr(self.source, "where", None)
            return TeacherJoin(
                self._make_parent, self.teacher, self.config.teacher_max_ahead, grain_state, where
            )
        return _GrainRows(self._make_parent, grain_state)

    def iterator(self, state: dict | None = None) -> BatchIterator:
        return BatchIterator(self, state)

    def __iter__(self) -> BatchIterator:
        return self.iterator()


class BatchIterator:
    """Iterator of padded numpy batches with ``get_state`` / ``set_state`` and ``stats``."""

    STATE_VERSION = 1

    def __init__(self, pipeline: DataPipeline, state: dict | None = None):
        self._p = pipeline
        self.stats = DataStats(pipeline._static)
        self._rows = None
        self.set_state(state)

    def set_state(self, state: dict | None) -> None:
        """Continue from ``state`` (from :meth:`get_state`); None restarts from the beginning."""
        if state is not None and state.get("version") != self.STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} != {self.STATE_VERSION}")
        if self._rows is not None:
            self._rows.close()
        self.stats = DataStats(self._p._static)
        if state is not None:
            self.stats.load(state["stats"])
        self._rows = self._p._open_rows(state["grain"] if state is not None else None)
        self._after = self._position()  # state after the last returned batch
        self._before = self._after  # and before it (unread_last_batch)

    def _position(self) -> dict[str, Any]:
        return copy.deepcopy({"grain": self._rows.state(), "stats": self.stats.state()})

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state after the last returned batch (rows read into a batch that was never
        returned, e.g. when a teacher limit stopped it half-way, are not part of it)."""
        return {
            "version": self.STATE_VERSION,
            **copy.deepcopy(self._after),
            "process_index": self._p.process_index,
            "process_count": self._p.process_count,
        }

    def unread_last_batch(self) -> None:
        """Make :meth:`get_state` the state BEFORE the last returned batch: a multi-host run that stops
        before training on a batch (another host could not build its own) checkpoints a state that reads
        it again on resume. Only the checkpointed state moves; iterate no further after this."""
        self._after = self._before

    @property
    def teacher_failed(self) -> int:
        """Prompts skipped because the teacher did not answer them (in the iterator state, so cumulative
        over a resumed run)."""
        return int(self.stats.dropped.get("teacher_failed", 0))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        p, c = self._p, self._p.config
        kept: list[dict[str, Any]] = []
        while len(kept) < p.local_batch_size:
            try:
                element = next(self._rows)
            except StopIteration:
                break
            if p.online and not c.prompts_only:
                element = p.encoder.encode_response(element)
            self.stats.count_row(element)
            if not element.get("dropped"):
                kept.append(element)
            elif element["dropped"] == "teacher_failed":
                limit = c.teacher_max_failed
                if 0 <= limit < self.teacher_failed:  # this host alone is past the (global) limit
                    raise TooManyFailedPrompts(self.teacher_failed, limit, [p.process_index])
        if not kept or (len(kept) < p.local_batch_size and c.drop_remainder):
            self.stats.counts["remainder_dropped"] += len(kept)
            raise StopIteration
        batch = collate(
            kept,
            p.pad_id,
            c.max_prompt_tokens,
            c.max_response_tokens,
            c.buckets,
            c.min_bucket,
            with_response=not c.prompts_only,
        )
        self.stats.count_batch(batch)
        self._before, self._after = self._after, self._position()
        return batch

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
