"""Random-access row sources for grain: JSONL, parquet, and tfds (array_record, no TensorFlow).

Every source has ``__len__`` and ``__getitem__(i) -> dict`` (the grain ``RandomAccessDataSource``
protocol) and returns records::

    {"example_id": int, "messages": list[{"role", "content"}], "response": str | None}

``example_id`` is the row's index in the source (0 .. len-1, after bad rows were skipped); it is the
``example_id`` column of the batches and the prompt id given to the teacher client.
``source.where(i)`` gives the row's ``file:line`` for messages.

All rows are validated ONCE when the source is opened (one pass, :func:`gadjax.data.rows.normalize_row`),
so a bad row fails before training starts rather than hours in; in ``skip_bad_rows`` mode the bad rows
are counted (``source.bad_rows``) and left out of the index. JSONL sources keep only line byte offsets
in memory and re-parse the line on access; parquet sources keep the (memory-mapped) arrow table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gadjax import paths as gpaths
from gadjax.data.rows import BadRowCounter, DataError, normalize_row, parse_jsonl_line

PathLike = str | os.PathLike


def _as_paths(paths: PathLike | Sequence[PathLike]) -> tuple[list[str], list[str]]:
    """(names as given, local files to read): a gs:// file is downloaded once to this host's disk
    (random access by byte offset and memory-mapped parquet need local files); messages name the URL."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    names = [os.fspath(p) for p in paths]
    if not names:
        raise ValueError("no data files given")
    for p in names:
        if not (gpaths.exists(p) and not gpaths.isdir(p)):
            raise FileNotFoundError(f"data file not found: {p}")
    return names, [gpaths.localize(p, "data") for p in names]


def _record(i: int, row) -> dict[str, Any]:
    return {
        "example_id": i,
        "messages": row.messages,
        "response": row.response,
        "finish_reason": row.finish_reason,
    }


class _FileSource:
    """What the JSONL and parquet sources share: their files are checked, then every row is validated
    once (:meth:`_index`); a bad row raises, or with ``skip_bad_rows`` is counted and left out."""

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        skip_bad_rows: bool = False,
        require_response: bool = False,
    ):
        self.names, self.paths = _as_paths(paths)
        self.require_response = require_response
        self.bad_rows = BadRowCounter()
        self._index(skip_bad_rows)

    def _index(self, skip_bad_rows: bool) -> None:
        """Validate every row of ``self.paths`` and index the good ones."""
        raise NotImplementedError

    def _is_good_row(self, skip_bad_rows: bool, check: Callable[..., Any], *args) -> bool:
        """Validate one row with ``check(*args)``: True for a good row; a bad row raises its
        :class:`DataError`, or with ``skip_bad_rows`` is counted in ``self.bad_rows`` and gives False."""
        return self.bad_rows.checked(skip_bad_rows, check, *args) is not None


class JsonlSource(_FileSource):
    """Rows of one or more JSONL files; indexes (file, byte offset, line number) of good lines once."""

    def _index(self, skip_bad_rows: bool) -> None:
        files, offsets, lengths, lines = [], [], [], []
        for fi, path in enumerate(self.paths):
            with open(path, "rb") as f:
                offset = 0
                for lineno, line in enumerate(f, start=1):
                    where = f"{self.names[fi]}:{lineno}"
                    if line.strip() and self._is_good_row(
                        skip_bad_rows, parse_jsonl_line, line, where, self.require_response
                    ):
                        files.append(fi)
                        offsets.append(offset)
                        lengths.append(len(line))
                        lines.append(lineno)
                    offset += len(line)
        self._file = np.asarray(files, np.int32)
        self._offset = np.asarray(offsets, np.int64)
        self._length = np.asarray(lengths, np.int64)
        self._line = np.asarray(lines, np.int64)
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._offset)

    def where(self, i: int) -> str:
        return f"{self.names[self._file[i]]}:{self._line[i]}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        fi = int(self._file[i])
        # One descriptor per file, opened lazily (grain workers get a pickled copy without them);
        # pread has no shared file position, so grain's reader threads can share it.
        fd = self._fds.get(fi)
        if fd is None:
            fd = self._fds.setdefault(fi, os.open(self.paths[fi], os.O_RDONLY))
        line = os.pread(fd, int(self._length[i]), int(self._offset[i]))
        return _record(i, parse_jsonl_line(line, self.where(i), self.require_response))

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __repr__(self) -> str:
        return f"JsonlSource({self.names}, rows={len(self)}, skipped={self.bad_rows.total})"


class ParquetSource(_FileSource):
    """Rows of one or more parquet files (pyarrow); the 'line' in messages is the 0-based row index."""

    def _index(self, skip_bad_rows: bool) -> None:
        import pyarrow.parquet as pq

        self._tables = []
        files, rows = [], []
        for fi, path in enumerate(self.paths):
            try:
                table = pq.read_table(path, memory_map=True)
            except Exception as e:  # pyarrow raises several types for a non-parquet file
                raise DataError(self.names[fi], f"not a readable parquet file: {e}", "bad_file") from None
            self._tables.append(table)
            for ri, raw in enumerate(table.to_pylist()):
                if self._is_good_row(
                    skip_bad_rows, normalize_row, raw, f"{self.names[fi]}:{ri}", self.require_response
                ):
                    files.append(fi)
                    rows.append(ri)
        self._file = np.asarray(files, np.int32)
        self._row = np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self._row)

    def where(self, i: int) -> str:
        return f"{self.names[self._file[i]]}:{self._row[i]}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        raw = self._tables[int(self._file[i])].slice(int(self._row[i]), 1).to_pylist()[0]
        return _record(i, normalize_row(raw, self.where(i), self.require_response))

    def __repr__(self) -> str:
        return f"ParquetSource({self.names}, rows={len(self)}, skipped={self.bad_rows.total})"


def _decode(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class TfdsSource:
    """Rows of a prepared :class:`gadjax.data.tfds_builder.GadRows` split, read with ``tfds.data_source``.

    The rows were validated when the dataset was built; records are converted back from tfds' numpy
    form (bytes) to the common record dict. ``example_id`` is the position in the split (the builder
    keeps the source order), ``where`` names the original file:line kept in the dataset.
    """

    def __init__(self, data_dir: PathLike, split: str = "train"):
        import tensorflow_datasets as tfds

        from gadjax.data import tfds_builder  # registers the builder class with tfds

        self.data_dir, self.split = gpaths.localize(data_dir, "data"), split  # array_record reads local files
        self._ds = tfds.data_source(tfds_builder.GadRows.name, data_dir=self.data_dir, split=split)
        self.bad_rows = BadRowCounter()

    def __len__(self) -> int:
        return len(self._ds)

    def where(self, i: int) -> str:
        return _decode(self._ds[int(i)]["where"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        ex = self._ds[i]
        msgs = ex["messages"]
        messages = [
            {"role": _decode(r), "content": _decode(c)}
            for r, c in zip(msgs["role"], msgs["content"], strict=True)
        ]
        response = _decode(ex["response"]) if bool(ex["has_response"]) else None
        return {"example_id": i, "messages": messages, "response": response, "finish_reason": None}

    def __repr__(self) -> str:
        return f"TfdsSource({self.data_dir}, split={self.split}, rows={len(self)})"


def open_source(
    paths: PathLike | Sequence[PathLike],
    kind: str = "auto",
    skip_bad_rows: bool = False,
    require_response: bool = False,
    split: str = "train",
):
    """Open a row source. ``kind``: auto (by suffix / directory) | jsonl | parquet | tfds.

    A directory (or kind='tfds') is read as a prepared tfds ``GadRows`` dataset (see
    :func:`gadjax.data.tfds_builder.build_tfds`).
    """
    first = os.fspath(paths if isinstance(paths, str | os.PathLike) else paths[0])
    if kind == "auto":
        kind = "tfds" if gpaths.isdir(first) else ("parquet" if first.endswith(".parquet") else "jsonl")
    if kind == "jsonl":
        return JsonlSource(paths, skip_bad_rows, require_response)
    if kind == "parquet":
        return ParquetSource(paths, skip_bad_rows, require_response)
    if kind == "tfds":
        return TfdsSource(first, split)
    raise ValueError(f"unknown source kind {kind!r} (auto | jsonl | parquet | tfds)")


def source_stats(source: Any) -> Mapping[str, Any]:
    """Row count and bad-row report of a source, for the trainer's log."""
    bad = getattr(source, "bad_rows", None)
    return {"rows": len(source), **(bad.report() if bad is not None else {"skipped": 0})}
