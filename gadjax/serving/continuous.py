"""The continuous-batching engine behind gadjax.serve: requests join and leave the running batch.

One worker thread owns the device (gadjax.serving.slots). Between two decode chunks (``chunk_steps``
steps on every slot) it admits waiting requests into free slots: each request's prompt is prefilled once
(left-padded to a prompt bucket) and each of its ``n`` choices takes a slot (its first token is drawn at
insert). After a chunk, the host appends every busy slot's new tokens and ends a row at its first stop id
or at its own ``max_tokens``; the slot is free for the next row at once, so a short request never waits
for a long one, and a request resolves as soon as its last choice ends.

Keys: a request with a ``seed`` uses ``jax.random.key(seed)``, others a key folded from the engine's base
key and the request's sequence number; choice j of a request draws from (key, j, position) only, so the
same seed gives the same text whatever else is running (and as the static Engine's key scheme: prompt 0,
sample j). Programs: one prefill and one insert per prompt bucket, one decode; nothing else compiles.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import time
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from gadjax.rollout.sampling import row_keys
from gadjax.serving.engine import MIN_PROMPT_BUCKET, Generation, GenParams, prompt_buckets
from gadjax.serving.queued import QueuedEngine, Request
from gadjax.serving.slots import Slots

log = logging.getLogger("gadjax.serve")


@dataclasses.dataclass
class _Request(Request):
    key: Any = None
    rows: list = dataclasses.field(default_factory=list)  # per choice: generated token ids
    left: int = 0  # choices not finished yet
    admitted: int = 0  # choices given a slot so far
    prefilled: Any = None  # (prompt cache, logits) while choices wait for slots
    t0: float = 0.0


class ContinuousEngine(QueuedEngine):
    """Continuous-batching generation for one Decoder. Thread-safe ``submit``; call :meth:`close` when done.

    max_batch: decode slots (rows decoded together). chunk_steps: decode steps between two admissions
    (a row may compute up to chunk_steps - 1 tokens past its end; they are dropped). Other arguments as
    gadjax.serving.engine.Engine (batch_wait_ms is accepted and unused: requests join between chunks).
    """

    request_type = _Request

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: Iterable[int],
        pad_id: int,
        max_batch: int = 8,
        batch_wait_ms: float = 0.0,
        max_new_tokens: int = 256,
        max_prompt_tokens: int = 2048,
        min_prompt_bucket: int = MIN_PROMPT_BUCKET,
        chunk_steps: int = 8,
        seed: int | None = None,
        layer_loop: str = "auto",
    ):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps={chunk_steps}: must be >= 1")
        self._init_queue(
            eos_ids=eos_ids, pad_id=pad_id, max_batch=max_batch, max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens, seed=seed,
        )  # fmt: skip
        self.prompt_buckets = prompt_buckets(self.max_prompt_tokens, min_prompt_bucket)
        self.chunk_steps = int(chunk_steps)
        self._slots = Slots(model, self.max_batch, self.prompt_buckets[-1], self.max_new_tokens, layer_loop)
        self._start_worker()

    # ------------------------------------------------------------------ public API (as Engine's)

    def warmup(self, params: GenParams, prompt_tokens: int = 1) -> int:
        """Compile the prefill / insert for the bucket of ``prompt_tokens`` and the decode chunk."""
        self.generate([self.pad_id] * prompt_tokens, params, n=1)
        return 1

    def stats(self) -> dict[str, int]:
        """Counters: requests, rows (choices), batches (decode chunks), slot_steps, busy_slot_steps,
        errors, queued."""
        with self._lock:
            keys = ("requests", "rows", "batches", "slot_steps", "busy_slot_steps", "errors")
            out = {k: self._stats.get(k, 0) for k in keys}
        out["queued"] = self._queue.qsize()
        return out

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        st = self._slots.init()
        busy: dict[int, tuple[_Request, int]] = {}  # slot -> (request, choice)
        waiting: collections.deque[_Request] = collections.deque()
        stop = False
        while True:
            try:
                if not stop:  # take new requests; block only when there is nothing to run
                    block = not busy and not waiting
                    while True:
                        try:
                            item = self._queue.get(timeout=None) if block else self._queue.get_nowait()
                        except queue.Empty:
                            break
                        block = False
                        if item is None:
                            stop = True
                            break
                        waiting.append(item)
                if stop:
                    for r in list(waiting) + [r for r, _ in busy.values()]:
                        if not r.future.done():
                            r.future.set_exception(RuntimeError("server is shutting down"))
                    return
                st = self._admit(st, busy, waiting)
                if busy:
                    st = self._chunk(st, busy)
            except Exception as e:  # fail what is in flight, keep serving with fresh slots
                log.exception("generation failed")
                with self._lock:
                    self._stats["errors"] += 1
                for r in list(waiting) + [r for r, _ in busy.values()]:
                    if not r.future.done():
                        r.future.set_exception(e)
                busy.clear()
                waiting.clear()
                st = self._slots.init()

    def _admit(self, st: Any, busy: dict, waiting: collections.deque) -> Any:
        free = [s for s in range(self.max_batch) if s not in busy]
        while free and waiting:
            req = waiting[0]
            if req.prefilled is None:
                self._prefill(req)
            p = req.params
            temperature, top_p = (0.0, 1.0) if p.temperature == 0.0 else (p.temperature, p.top_p)
            while free and req.admitted < req.n:
                j, slot = req.admitted, free.pop(0)
                key = row_keys(req.key[None], np.asarray([j]), req.n)[0]  # (prompt 0, sample j)
                cache, logits, plen = req.prefilled
                st, tok = self._slots.insert(st, cache, logits, slot, key, temperature, top_p, plen)
                req.admitted += 1
                if self._append(req, j, [int(tok)]):
                    free.insert(0, slot)  # ended at its first token: the slot stays free
                else:
                    busy[slot] = (req, j)
            if req.admitted == req.n:
                req.prefilled = None
                waiting.popleft()
        return st

    def _prefill(self, req: _Request) -> None:
        width = next(b for b in self.prompt_buckets if b >= req.prompt.size)
        ids = np.full((1, width), self.pad_id, np.int32)
        mask = np.zeros((1, width), np.int32)
        ids[0, width - req.prompt.size :], mask[0, width - req.prompt.size :] = req.prompt, 1
        # Blocks: on CPU, several programs with collectives in flight at once can deadlock XLA (a
        # multi-device mesh); elsewhere the insert waits for the prefill anyway.
        cache, logits = jax.block_until_ready(self._slots.prefill(ids, mask))
        seed = req.params.seed
        req.key = jax.random.key(seed) if seed is not None else jax.random.fold_in(self._base_key, req.seq)
        req.prefilled = (cache, logits, req.prompt.size)
        req.rows, req.left, req.t0 = [[] for _ in range(req.n)], req.n, time.perf_counter()
        with self._lock:
            self._stats["rows"] += req.n

    def _chunk(self, st: Any, busy: dict) -> Any:
        st, toks = self._slots.decode(st, self.chunk_steps)
        toks = np.asarray(toks)  # blocks: the host decides which rows end
        with self._lock:
            self._stats["batches"] += 1
            self._stats["slot_steps"] += self.max_batch * self.chunk_steps
            self._stats["busy_slot_steps"] += len(busy) * self.chunk_steps
        for slot in list(busy):
            req, j = busy[slot]
            if self._append(req, j, toks[slot].tolist()):
                del busy[slot]
        return st

    def _append(self, req: _Request, j: int, toks: list[int]) -> bool:
        """Add new tokens to choice j; True when it ended (stop id or max_tokens), resolving the request
        when it was the last choice."""
        row, cap = req.rows[j], req.params.max_tokens
        start = len(row)
        for t in toks:
            row.append(t)
            if t in self.eos_ids or len(row) >= cap:
                break
        else:
            req.report_tokens(j, row[start:])
            return False
        req.report_tokens(j, row[start:])
        req.left -= 1
        if req.left == 0 and not req.future.done():
            req.future.set_result([self._generation(r, cap) for r in req.rows])
        return True

    def _generation(self, toks: list[int], max_tokens: int) -> Generation:
        if toks and toks[-1] in self.eos_ids:
            return Generation(toks[:-1], len(toks), "stop")
        return Generation(toks[:max_tokens], min(len(toks), max_tokens), "length")
