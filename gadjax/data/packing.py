"""Packing rows of concat(prompt, response) into fixed-length sequences (``train.packing``), on the host.

A padded batch gives every row the prompt bucket plus the response cap (2,048 + 1,536 tokens at the paper's
scale) although a real row is ~400-500 tokens (gadjax.data.lengths). Packing lays the REAL tokens of
several rows one after another in sequences of ``pack_length`` tokens, with

- segment ids (0 = padding, k = the k-th row of its sequence): the attention backends keep every query on
  its own row (gadjax.models.attention), so a row sees exactly what it sees when padded;
- positions restarting at 0 on each row: the rotary angles are the padded layout's;
- per-token arrays for the losses: ``targets`` (the next token of the same row), ``loss_mask`` (1 where a
  position predicts a response token) and ``row_tokens`` (that row's response-token count, for the
  seq-mean loss modes); per-row values (advantages, reference log-probs) are spread onto those positions.

Micro-batches have one shape, ``[rows, pack_length]`` (``PackShape``): memory is bounded by it whatever the
lengths, and a step with more tokens runs more micro-batches, never a bigger one. A row never splits
across sequences; a group of rows (the discriminator's teacher row and the prompt's N samples) stays in
one micro-batch, since its loss couples them. The number of micro-batches is rounded up to a power of
two (``micro_bucket``) so a program compiles at most 1 + ceil(log2(M_worst)) times, M_worst being the
count with every row at the caps (``worst_case_micro``); the all-padding micro-batches of a bucket are
skipped on device (gadjax.algo.packed), so they cost no compute.

Placement is first-fit decreasing (longest rows first, each into the first sequence with room): the
textbook bin-packing heuristic, the one verl's token-balanced micro-batching also starts from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

MAX_ROWS_PER_SEQUENCE = 64  # row slots per sequence (J): the discriminator reads each row's last token
PACK_ALIGN = 128  # pack_length=0 rounds the longest row up to this (TPU lanes, the flash/splash blocks)

# The config keys (gadjax.config's train section). pack_length 0: the longest possible row (prompt cap +
# response cap) rounded up to PACK_ALIGN. pack_rows 0: ``auto_rows`` (one padded micro-batch's tokens).
DEFAULTS = dict(packing=False, pack_length=0, pack_rows=0)


@dataclasses.dataclass(frozen=True)
class PackShape:
    """One packed micro-batch: ``rows`` sequences of ``length`` tokens, each holding <= ``slots`` rows."""

    rows: int
    length: int
    slots: int = MAX_ROWS_PER_SEQUENCE


def micro_bucket(m: int) -> int:
    """Micro-batch count ``m`` rounded up to a power of two (bounds the number of compiled programs)."""
    return 1 << max(0, math.ceil(math.log2(max(1, m))))


def worst_case_micro(n_rows: int, row_cap: int, shape: PackShape, group_size: int = 1) -> int:
    """Micro-batches needed when every row has ``row_cap`` tokens (the worst case a plan must fit)."""
    per_seq = min(shape.slots, shape.length // row_cap)
    groups_per_micro = (shape.rows * per_seq) // group_size
    return -(-(n_rows // group_size) // max(1, groups_per_micro))


def auto_rows(padded_rows: int, row_cap: int, pack_length: int, shards: int) -> int:
    """``train.pack_rows=0``: as many sequences as hold the token slots of one padded micro-batch
    (``padded_rows`` x ``row_cap``: the memory the padded layout was sized for), a multiple of the batch
    ``shards``, at least one per shard."""
    rows = (padded_rows * row_cap) // pack_length
    return max(shards, rows - rows % shards)


def real_tokens(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The real tokens of each row of a padded [B, T] array (positions where ``mask`` is nonzero)."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    return [ids[b][mask[b] > 0] for b in range(ids.shape[0])]


@dataclasses.dataclass
class Packing:
    """Where every row went: micro-batch, sequence, slot, first column; and its prompt / response lengths.

    Rows are numbered as given to ``pack``; groups are ``group_size`` consecutive rows."""

    shape: PackShape
    micro: int  # M, the bucketed micro-batch count
    used: int  # micro-batches that hold rows
    group_size: int
    row_micro: np.ndarray
    row_seq: np.ndarray
    row_slot: np.ndarray
    row_start: np.ndarray
    prompt_len: np.ndarray
    response_len: np.ndarray

    @property
    def groups_per_micro(self) -> int:
        return self.shape.rows * self.shape.slots // self.group_size

    def _grid(self, dtype) -> np.ndarray:
        return np.zeros((self.micro, self.shape.rows, self.shape.length), dtype)

    def _loss_columns(self, b: int) -> tuple[int, int, int, int]:
        """(micro, sequence, first, last+1) columns predicting row b's response tokens."""
        first = self.row_start[b] + self.prompt_len[b] - 1
        return self.row_micro[b], self.row_seq[b], first, first + self.response_len[b]

    def tokens(self, prompts: Sequence[np.ndarray], responses: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The packed arrays [M, rows, length]: ids, segments, positions, targets (the next token of the
        same row), loss_mask (1 where a response token is predicted), row_tokens (that row's response
        length there: the seq-mean-token-mean weight)."""
        ids, seg, pos, tgt = (self._grid(np.int32) for _ in range(4))
        loss_mask, row_tokens = self._grid(np.float32), self._grid(np.float32)
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            m, s, st = self.row_micro[b], self.row_seq[b], self.row_start[b]
            row = np.concatenate([p, r]).astype(np.int32)
            end = st + row.size
            ids[m, s, st:end] = row
            seg[m, s, st:end] = self.row_slot[b] + 1
            pos[m, s, st:end] = np.arange(row.size)
            tgt[m, s, st : end - 1] = row[1:]
            _, _, c0, c1 = self._loss_columns(b)
            loss_mask[m, s, c0:c1] = 1.0
            row_tokens[m, s, c0:c1] = float(r.size)
        return dict(
            ids=ids, segments=seg, positions=pos, targets=tgt, loss_mask=loss_mask, row_tokens=row_tokens
        )

    def spread_rows(self, values: np.ndarray) -> np.ndarray:
        """Per-row values [n] onto each row's loss columns -> [M, rows, length] float32 (advantages)."""
        out = self._grid(np.float32)
        for b, v in enumerate(np.asarray(values, np.float32)):
            m, s, c0, c1 = self._loss_columns(b)
            out[m, s, c0:c1] = v
        return out

    def spread_response(self, values: np.ndarray) -> np.ndarray:
        """Per-token response values [n, R] (padded layout) -> [M, rows, length] float32."""
        out = self._grid(np.float32)
        values = np.asarray(values, np.float32)
        for b in range(values.shape[0]):
            m, s, c0, c1 = self._loss_columns(b)
            out[m, s, c0:c1] = values[b, : c1 - c0]
        return out

    def gather_response(self, packed: np.ndarray, width: int) -> np.ndarray:
        """[M, rows, length] per-token values -> the padded layout [n, width] (0 past each response)."""
        packed = np.asarray(packed)
        out = np.zeros((self.row_micro.size, width), packed.dtype)
        for b in range(out.shape[0]):
            m, s, c0, c1 = self._loss_columns(b)
            out[b, : c1 - c0] = packed[m, s, c0:c1]
        return out

    def row_values(self, per_slot: np.ndarray) -> np.ndarray:
        """[M, rows, slots] per-row outputs (discriminator scores) -> [n] in row order."""
        return np.asarray(per_slot)[self.row_micro, self.row_seq, self.row_slot]

    def score_index(self) -> dict[str, np.ndarray]:
        """The discriminator's reads: ``ends`` [M, rows, slots] (each row's last column), ``groups``
        [M, G, group_size] (flat slot indices s * slots + j of a group's rows, in row order) and
        ``group_valid`` [M, G] (1 for a real group)."""
        sh = self.shape
        ends = np.zeros((self.micro, sh.rows, sh.slots), np.int32)
        last = self.row_start + self.prompt_len + self.response_len - 1
        ends[self.row_micro, self.row_seq, self.row_slot] = last
        gpm = self.groups_per_micro
        groups = np.zeros((self.micro, gpm, self.group_size), np.int32)
        valid = np.zeros((self.micro, gpm), np.float32)
        fill = np.zeros(self.micro, np.int64)
        flat = self.row_seq * sh.slots + self.row_slot
        for g in range(self.row_micro.size // self.group_size):
            rows = slice(g * self.group_size, (g + 1) * self.group_size)
            m = self.row_micro[rows.start]
            groups[m, fill[m]] = flat[rows]
            valid[m, fill[m]] = 1.0
            fill[m] += 1
        return dict(ends=ends, groups=groups, group_valid=valid)


def pack(
    prompt_len: np.ndarray, response_len: np.ndarray, shape: PackShape, *, group_size: int = 1
) -> Packing:
    """Place rows (lengths in tokens) into micro-batches of ``shape``, first-fit decreasing; groups of
    ``group_size`` consecutive rows share a micro-batch. Raises ValueError for a row that cannot fit."""
    prompt_len = np.asarray(prompt_len, np.int64)
    response_len = np.asarray(response_len, np.int64)
    n = prompt_len.size
    lens = prompt_len + response_len
    if n % group_size:
        raise ValueError(f"pack: {n} rows do not form groups of {group_size}")
    if n and prompt_len.min() < 1:
        raise ValueError("pack: a row has no prompt token (its first response token has no predictor)")
    if n and lens.max() > shape.length:
        raise ValueError(
            f"pack: a row of {int(lens.max())} tokens does not fit train.pack_length={shape.length}"
        )
    free = np.zeros(0, np.int64)  # free tokens of every sequence so far (micro-batch m: m*S .. m*S+S-1)
    count = np.zeros(0, np.int64)  # rows in each sequence
    groups_in = np.zeros(0, np.int64)  # groups in each micro-batch
    seq = np.zeros(n, np.int64)
    start = np.zeros(n, np.int64)
    slot = np.zeros(n, np.int64)
    gpm = shape.rows * shape.slots // group_size
    n_groups = n // group_size
    group_lens = lens.reshape(n_groups, group_size)
    for g in np.argsort(-group_lens.sum(axis=1), kind="stable"):
        rows = g * group_size + np.argsort(-group_lens[g], kind="stable")
        placed = None
        for m in range(groups_in.size):
            if groups_in[m] >= gpm:
                continue
            placed = _fit(lens[rows], free[m * shape.rows : (m + 1) * shape.rows], count, m, shape)
            if placed is not None:
                break
        if placed is None:  # a fresh micro-batch
            m = groups_in.size
            free = np.concatenate([free, np.full(shape.rows, shape.length, np.int64)])
            count = np.concatenate([count, np.zeros(shape.rows, np.int64)])
            groups_in = np.concatenate([groups_in, [0]])
            placed = _fit(lens[rows], free[m * shape.rows :], count, m, shape)
            if placed is None:
                raise ValueError(
                    f"pack: a group of {group_size} rows ({int(lens[rows].sum())} tokens) does not fit one "
                    f"micro-batch of train.pack_rows={shape.rows} x train.pack_length={shape.length}"
                )
        groups_in[m] += 1
        for b, s in zip(rows, placed, strict=True):
            seq[b] = s
            start[b] = shape.length - free[s]
            slot[b] = count[s]
            free[s] -= lens[b]
            count[s] += 1
    used = int(groups_in.size)
    return Packing(
        shape=shape,
        micro=micro_bucket(used),
        used=used,
        group_size=group_size,
        row_micro=(seq // shape.rows).astype(np.int64),
        row_seq=(seq % shape.rows).astype(np.int64),
        row_slot=slot,
        row_start=start,
        prompt_len=prompt_len,
        response_len=response_len,
    )


def _fit(lens: np.ndarray, free: np.ndarray, count: np.ndarray, m: int, shape: PackShape) -> list[int] | None:
    """First-fit of rows ``lens`` into micro-batch m's sequences (``free`` is its slice): the global
    sequence index of each row, or None when one does not fit (nothing is changed)."""
    free = free.copy()
    cnt = count[m * shape.rows : (m + 1) * shape.rows].copy()
    out = []
    for n_tok in lens:
        ok = np.flatnonzero((free >= n_tok) & (cnt < shape.slots))
        if ok.size == 0:
            return None
        s = int(ok[0])
        free[s] -= n_tok
        cnt[s] += 1
        out.append(m * shape.rows + s)
    return out


def pack_padded(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    response_ids: np.ndarray,
    response_mask: np.ndarray,
    shape: PackShape,
) -> tuple[Packing, dict[str, np.ndarray]]:
    """Pack the rows of a padded batch (prompt LEFT-, response RIGHT-padded, as the data pipeline and the
    rollout give them): the layout and its token arrays (``Packing.tokens``)."""
    prompts, responses = real_tokens(prompt_ids, prompt_mask), real_tokens(response_ids, response_mask)
    layout = pack([p.size for p in prompts], [r.size for r in responses], shape)
    return layout, layout.tokens(prompts, responses)


def pack_discriminator(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    teacher_ids: np.ndarray,
    teacher_mask: np.ndarray,
    student_ids: np.ndarray,
    student_mask: np.ndarray,
    n: int,
    shape: PackShape,
) -> tuple[Packing, dict[str, np.ndarray]]:
    """The discriminator's rows packed as groups: prompt i's teacher row, then its N samples (student rows
    i*N .. i*N+N-1); token arrays plus the score reads (``Packing.score_index``). Row order of the layout:
    group i is rows i*(1+N) .. i*(1+N)+N."""
    prompts = real_tokens(prompt_ids, prompt_mask)
    teacher = real_tokens(teacher_ids, teacher_mask)
    students = real_tokens(student_ids, student_mask)
    rows_p, rows_r = [], []
    for i, p in enumerate(prompts):
        rows_p += [p] * (1 + n)
        rows_r += [teacher[i]] + students[i * n : (i + 1) * n]
    layout = pack([p.size for p in rows_p], [r.size for r in rows_r], shape, group_size=1 + n)
    return layout, {**layout.tokens(rows_p, rows_r), **layout.score_index()}


def student_scores(layout: Packing, row_scores: np.ndarray) -> np.ndarray:
    """The samples' scores [B*N] (rollout order) from ``pack_discriminator``'s per-slot scores."""
    per_row = layout.row_values(row_scores).reshape(-1, layout.group_size)
    return per_row[:, 1:].reshape(-1)


def longest_row(c) -> int:
    """The longest row any packed pass of config ``c`` sees: the prompt cap plus the longest response cap
    of its stage (teacher responses; seqkd aside, the rollout's too)."""
    response = c.data.max_response_tokens
    if c.stage != "seqkd":
        response = max(response, c.rollout.max_new_tokens)
    return int(c.data.max_prompt_tokens + response)


def pack_length(c) -> int:
    """``train.pack_length``, with 0 resolved to the longest row rounded up to PACK_ALIGN."""
    if c.train.pack_length:
        return int(c.train.pack_length)
    return -(-longest_row(c) // PACK_ALIGN) * PACK_ALIGN


def pack_shape(c, kind: str, shards: int) -> PackShape:
    """The packed micro-batch of pass ``kind`` (disc | sft | policy; the reference pass uses policy's):
    ``train.pack_rows`` sequences, or (0) as many as hold one padded micro-batch's tokens, the memory the
    padded config was sized for (``auto_rows``); ``shards`` = the mesh's batch shards (data x fsdp)."""
    length = pack_length(c)
    if c.train.pack_rows:
        return PackShape(rows=int(c.train.pack_rows), length=length)
    b, p, n = c.data.batch_size, c.data.max_prompt_tokens, c.rollout.n_samples
    if kind == "disc":
        rows, cap = b // c.train.micro_batches_d * (1 + n), longest_row(c)
    elif kind == "sft":
        rows, cap = b // c.train.micro_batches_g, p + c.data.max_response_tokens
    else:
        rows, cap = b * n // c.train.micro_batches_g, p + c.rollout.max_new_tokens
    return PackShape(rows=auto_rows(rows, cap, length, shards), length=length)


def validate(c, fail) -> None:
    """Config checks of the packing keys (gadjax.trainer.validation.validate's ``fail`` names the key)."""
    t = c.train
    if not isinstance(t.packing, bool):
        fail("train.packing", f"must be True or False (got {t.packing!r})")
    for key in ("pack_length", "pack_rows"):
        if not isinstance(t[key], int) or t[key] < 0:
            fail(f"train.{key}", f"must be an integer >= 0 (0 = auto), got {t[key]!r}")
    if not t.packing:
        return
    longest = longest_row(c)
    if t.pack_length and t.pack_length < longest:
        fail(
            "train.pack_length",
            f"{t.pack_length} is shorter than the longest possible row, {longest} tokens "
            "(data.max_prompt_tokens + data.max_response_tokens / rollout.max_new_tokens): "
            "a row never splits across sequences",
        )
    n = c.rollout.n_samples
    if c.stage != "seqkd" and t.pack_rows and t.pack_rows * (pack_length(c) // longest) < 1 + n:
        fail(
            "train.pack_rows",
            f"{t.pack_rows} sequences of train.pack_length={pack_length(c)} cannot hold a discriminator "
            f"group (the teacher row and rollout.n_samples={n} samples, {longest} tokens each at the caps)",
        )
