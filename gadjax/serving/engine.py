"""The batching engine behind gadjax.serve: one worker thread owns the device and runs the sampler.

Request threads call :meth:`Engine.submit` with token ids and get a Future. The worker takes the first
waiting request, then gathers more for up to ``batch_wait_ms`` (or until ``max_batch`` rows are
waiting), and runs them through as few sampler calls as it can:

- each request of ``n`` choices contributes ``n`` rows (the prompt repeated; the sampler runs with
  ``n_samples=1``, so one compiled program serves every ``n``);
- rows are grouped by sampling settings: greedy (temperature 0, top_p ignored) or (temperature,
  top_p), and the max-tokens BUCKET (a power of two >= max_tokens, at most ``max_new_tokens``); each
  row is cut back to its own max_tokens afterwards;
- a request with a ``seed`` is a group of its own, keyed by ``jax.random.key(seed)``, so the same seed,
  prompt and settings give the same text whatever else is in flight (a row's draws are keyed by its
  prompt's index in the batch, its sample and position: gadjax.rollout.sampling.row_keys; a group of its
  own keeps that index fixed);
- each group is cut into chunks of ``max_batch`` rows and each chunk padded to a batch size in
  {1, 2, 4, ..., max_batch} with dummy rows (copies of its first prompt) whose outputs are dropped.

Compiled programs are therefore bounded: one Sampler per sampling setting, each with at most
(number of prompt buckets) x (number of batch sizes) programs. Temperature and top_p are compile-time
constants of the sampler, so clients that vary them freely create new settings: the ``max_samplers``
most recently used Samplers are kept (LRU) and older ones dropped with their programs.
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

from gadjax.rollout.sampler import Sampler, SamplingConfig
from gadjax.serving.queued import QueuedEngine, Request

log = logging.getLogger("gadjax.serve")

MIN_TOKENS_BUCKET = 16
MIN_PROMPT_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class GenParams:
    """Per-request sampling settings (already validated). temperature 0 = greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Generation:
    """One choice. ``token_ids`` excludes the stop token; ``num_tokens`` counts every generated token
    kept (the stop token included); ``finish_reason`` is 'stop' (a stop token) or 'length'."""

    token_ids: list[int]
    num_tokens: int
    finish_reason: str


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def prompt_buckets(max_prompt_tokens: int, smallest: int = MIN_PROMPT_BUCKET) -> tuple[int, ...]:
    """``smallest`` doubling while below ``max_prompt_tokens``, then ``max_prompt_tokens`` itself."""
    out, b = [], max(1, smallest)
    while b < max_prompt_tokens:
        out.append(b)
        b *= 2
    out.append(max_prompt_tokens)
    return tuple(out)


class Engine(QueuedEngine):
    """Batched generation for one Decoder. Thread-safe ``submit``; call :meth:`close` when done.

    eos_ids: tokens that end a response. max_new_tokens: the largest max_tokens a request may ask.
    max_prompt_tokens: longest accepted prompt (the largest prompt bucket); prompt buckets double from
    min_prompt_bucket up to it. seed: base key for requests without their own seed (None = random).
    mesh: the Mesh the model's weights are sharded over (gadjax.parallel.mesh.local_mesh), or None.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: Iterable[int],
        pad_id: int,
        max_batch: int = 8,
        batch_wait_ms: float = 10.0,
        max_new_tokens: int = 256,
        max_prompt_tokens: int = 2048,
        min_prompt_bucket: int = MIN_PROMPT_BUCKET,
        max_samplers: int = 16,
        seed: int | None = None,
        mesh: Any = None,
    ):
        self._init_queue(
            eos_ids=eos_ids, pad_id=pad_id, max_batch=max_batch, max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens, seed=seed,
        )  # fmt: skip
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms={batch_wait_ms}: must be >= 0")
        self.model = model
        self.mesh = mesh  # the Mesh the model's weights are sharded over (None: one device)
        self.batch_wait_s = float(batch_wait_ms) / 1000.0
        self.prompt_buckets = prompt_buckets(self.max_prompt_tokens, min_prompt_bucket)
        self.max_samplers = max(1, int(max_samplers))
        self._samplers: collections.OrderedDict[SamplingConfig, Sampler] = collections.OrderedDict()
        self._start_worker()

    # ------------------------------------------------------------------ public API

    def tokens_bucket(self, max_tokens: int) -> int:
        """The decode length a request of ``max_tokens`` runs with (shared by its group)."""
        return min(self.max_new_tokens, max(MIN_TOKENS_BUCKET, _pow2_at_least(max_tokens)))

    def batch_size_for(self, rows: int) -> int:
        """Padded batch size: the smallest power of two >= rows, capped at max_batch."""
        return min(self.max_batch, _pow2_at_least(rows))

    def sampling_config(self, params: GenParams) -> SamplingConfig:
        """The SamplingConfig (and so the compiled programs) a request with ``params`` runs under."""
        greedy = params.temperature == 0.0
        return SamplingConfig(
            max_new_tokens=self.tokens_bucket(params.max_tokens),
            temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0 if greedy else float(params.top_p),
            greedy=greedy,
            n_samples=1,
            stop_ids=self.eos_ids,
            pad_id=self.pad_id,
            prompt_buckets=self.prompt_buckets,
        )

    def batch_sizes(self) -> list[int]:
        """Every padded batch size the engine can run: 1, 2, 4, ... and max_batch."""
        return sorted({self.batch_size_for(r) for r in range(1, self.max_batch + 1)})

    def warmup(self, params: GenParams, prompt_tokens: int = 1) -> int:
        """Compile the programs for ``params`` at every batch size (prompt bucket of ``prompt_tokens``)
        by running dummy requests through the worker. Returns the number of sampler calls made."""
        for b in self.batch_sizes():
            self.generate([self.pad_id] * prompt_tokens, params, n=b)
        return len(self.batch_sizes())

    def stats(self) -> dict[str, int]:
        """Counters: requests, rows (choices), batches (sampler calls), padded_rows, errors,
        samplers_evicted, samplers (cached now), compiled_programs (of cached samplers), queued."""
        with self._lock:
            out = {
                k: self._stats.get(k, 0)
                for k in ("requests", "rows", "batches", "padded_rows", "errors", "samplers_evicted")
            }
            samplers = list(self._samplers.values())
        out["samplers"] = len(samplers)
        out["compiled_programs"] = sum(s.num_compiled for s in samplers)
        out["queued"] = self._queue.qsize()
        return out

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending, rows, stop = [first], first.n, False
            deadline = time.monotonic() + self.batch_wait_s
            while rows < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
                rows += item.n
            try:
                self._run(pending)
            except Exception as e:  # a bug outside one group: fail these requests, keep the worker alive
                log.exception("batch of %d request(s) failed", len(pending))
                for r in pending:
                    if not r.future.done():
                        r.future.set_exception(e)
            if stop:
                return

    def _group_key(self, req: Request) -> tuple:
        cfg = self.sampling_config(req.params)
        # Seeded requests run alone (see module doc); the sequence number keeps them apart.
        return (cfg, req.params.seed, req.seq if req.params.seed is not None else 0)

    def _run(self, pending: list[Request]) -> None:
        groups: dict[tuple, list[Request]] = {}
        for req in pending:
            groups.setdefault(self._group_key(req), []).append(req)
        for (cfg, seed, _), reqs in groups.items():
            try:
                self._run_group(cfg, seed, reqs)
            except Exception as e:  # one bad group must not take the server down
                log.exception("generation failed for %d request(s)", len(reqs))
                with self._lock:
                    self._stats["errors"] += 1
                for r in reqs:
                    if not r.future.done():
                        r.future.set_exception(e)

    def _sampler(self, cfg: SamplingConfig) -> Sampler:
        with self._lock:
            s = self._samplers.get(cfg)
            if s is None:
                s = self._samplers[cfg] = Sampler(self.model, cfg, mesh=self.mesh)
                while len(self._samplers) > self.max_samplers:
                    old, _ = self._samplers.popitem(last=False)
                    self._stats["samplers_evicted"] += 1
                    log.info("dropping the compiled programs of %s (max_samplers=%d)", old, self.max_samplers)
            self._samplers.move_to_end(cfg)
        return s

    def _run_group(self, cfg: SamplingConfig, seed: int | None, reqs: list[Request]) -> None:
        rows = [r for r in reqs for _ in range(r.n)]
        sampler = self._sampler(cfg)
        results: dict[int, list[Generation]] = {r.seq: [] for r in reqs}
        for c, start in enumerate(range(0, len(rows), self.max_batch)):
            chunk = rows[start : start + self.max_batch]
            b = self.batch_size_for(len(chunk))
            prompts = [r.prompt for r in chunk] + [chunk[0].prompt] * (b - len(chunk))
            width = max(p.size for p in prompts)
            ids = np.full((b, width), self.pad_id, np.int32)
            mask = np.zeros((b, width), np.int32)
            for i, p in enumerate(prompts):
                ids[i, width - p.size :] = p
                mask[i, width - p.size :] = 1
            if seed is not None:
                key = jax.random.fold_in(jax.random.key(seed), c)
            else:
                with self._lock:
                    key = jax.random.fold_in(self._base_key, self._stats["batches"])
            t0 = time.perf_counter()
            out = sampler.generate(ids, mask, key)
            log.info(
                "batch: %d row(s) padded to %d, prompt width %d, %d decode steps, %.3fs",
                len(chunk),
                b,
                width,
                out.decode_steps,
                time.perf_counter() - t0,
            )
            with self._lock:
                self._stats["batches"] += 1
                self._stats["rows"] += len(chunk)
                self._stats["padded_rows"] += b - len(chunk)
            for i, r in enumerate(chunk):
                results[r.seq].append(
                    self._generation(out.response_ids[i], int(out.response_lengths[i]), r.params.max_tokens)
                )
        for r in reqs:
            if not r.future.done():
                r.future.set_result(results[r.seq])

    def _generation(self, ids: np.ndarray, length: int, max_tokens: int) -> Generation:
        toks = [int(t) for t in ids[:length]]
        if len(toks) > max_tokens:  # the group's bucket is longer than this request's max_tokens
            return Generation(toks[:max_tokens], max_tokens, "length")
        if toks and toks[-1] in self.eos_ids:
            return Generation(toks[:-1], len(toks), "stop")
        return Generation(toks, len(toks), "length")
