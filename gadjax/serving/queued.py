"""What both serving engines share: the request queue, the worker thread that owns the device, and the
thread-safe public API (``submit`` / ``generate`` / ``close``).

gadjax.serving.engine.Engine (static batches) and gadjax.serving.continuous.ContinuousEngine (decode slots)
differ only in their worker loop (``_loop``) and their statistics.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

log = logging.getLogger("gadjax.serve")


@dataclasses.dataclass
class Request:
    """One queued request: ``n`` choices of ``params`` for ``prompt``; ``future`` gets the Generations."""

    prompt: np.ndarray
    params: Any  # gadjax.serving.engine.GenParams
    n: int
    future: cf.Future
    seq: int
    # on_tokens(choice, token_ids): called on the worker thread with each choice's new tokens as they are
    # produced (streaming); engines that produce a whole batch at once never call it.
    on_tokens: Callable[[int, list[int]], None] | None = None

    def report_tokens(self, choice: int, token_ids: list[int]) -> None:
        """Hand new tokens to ``on_tokens``; a failing listener (a client gone) never stops the engine."""
        if self.on_tokens is None or not token_ids:
            return
        try:
            self.on_tokens(choice, token_ids)
        except Exception:  # noqa: BLE001 (the listener's problem, reported, not the engine's)
            log.exception("on_tokens listener failed; the request still completes")
            self.on_tokens = None


class QueuedEngine:
    """A request queue drained by one worker thread (``_loop``, defined by the subclass)."""

    request_type: type[Request] = Request

    def _init_queue(
        self,
        *,
        eos_ids: Iterable[int],
        pad_id: int,
        max_batch: int,
        max_new_tokens: int,
        max_prompt_tokens: int,
        seed: int | None,
    ) -> None:
        """Check and keep the settings both engines share; the subclass then calls ``_start_worker``."""
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if max_new_tokens < 1 or max_prompt_tokens < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens}, max_prompt_tokens={max_prompt_tokens}: must be >= 1"
            )
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        if not self.eos_ids:
            raise ValueError(f"{type(self).__name__} needs at least one eos id")
        self.pad_id = int(pad_id)
        self.max_batch = int(max_batch)
        self.max_new_tokens = int(max_new_tokens)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self._base_key = jax.random.key(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stats: collections.Counter[str] = collections.Counter()
        self._seq = 0
        self._closed = False

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._loop, name="gadjax-serve-engine", daemon=True)
        self._worker.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: Any,
        n: int = 1,
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> cf.Future:
        """Queue one request; the Future resolves to ``n`` Generations (or raises the worker's error).
        ``on_tokens(choice, token_ids)``: new tokens of a choice as they are produced (see Request)."""
        prompt = np.asarray(prompt_ids, np.int32)
        if prompt.ndim != 1 or prompt.size == 0:
            raise ValueError("prompt_ids must be a non-empty 1-D sequence of token ids")
        if prompt.size > self.max_prompt_tokens:
            raise ValueError(
                f"prompt of {prompt.size} tokens exceeds max_prompt_tokens={self.max_prompt_tokens}"
            )
        if not 1 <= params.max_tokens <= self.max_new_tokens:
            raise ValueError(f"max_tokens={params.max_tokens}: must be in [1, {self.max_new_tokens}]")
        if n < 1:
            raise ValueError(f"n={n}: must be >= 1")
        fut: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._seq += 1
            req = self.request_type(prompt, params, int(n), fut, self._seq, on_tokens)
            self._stats["requests"] += 1
        self._queue.put(req)
        return fut

    def generate(self, prompt_ids: Sequence[int], params: Any, n: int = 1) -> list:
        """Blocking :meth:`submit`."""
        return self.submit(prompt_ids, params, n).result()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker after the work in flight; queued requests fail with 'shutting down'."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None and not req.future.done():
                req.future.set_exception(RuntimeError("server is shutting down"))
