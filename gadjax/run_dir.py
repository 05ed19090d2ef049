"""A run directory that may live on object storage, and the files of it that must live on a local disk.

Checkpoints (orbax), exports, evaluation outputs, selection.json and config.json are written straight
into ``run_dir``, local or ``gs://``. Some files cannot be: SQLite caches (WAL needs a real filesystem)
and files that grow by appends (metrics.jsonl, TensorBoard events: object storage has no append). They
live in this host's working copy of the run (``local``: the run_dir itself when it is local, else a
directory under ``$GADJAX_LOCAL_DIR``, see gadjax.paths.local_mirror) and :meth:`RunDir.push` copies
them into ``run_dir``; :meth:`RunDir.fetch` brings them back on a new VM. With a local run_dir both are
no-ops.

    file                              who writes it          pushed                        fetched
    metrics.jsonl, metrics.replaced   process 0              every metrics.sync_every_s,   at resume
    tensorboard/                                             at each checkpoint, at the end
    teacher_cache.p<i>.sqlite         process i (its own)    at each checkpoint (if        at start, when
    judge_cache.sqlite                process 0              changed): an SQLite backup    missing here
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from gadjax import paths


class RunDir:
    """``run_dir`` (local or remote) and this host's working directory for it."""

    def __init__(self, run_dir: str):
        self.path = paths.absolute(run_dir)
        self.remote = paths.is_remote(run_dir)
        self.local = paths.local_mirror(run_dir)
        os.makedirs(self.local, exist_ok=True)
        self._pushed: dict[str, tuple] = {}  # name -> the local file state last pushed

    def local_path(self, name: str) -> str:
        """Where this host keeps ``name`` (a path inside run_dir when it is local)."""
        return os.path.join(self.local, name)

    def fetch(self, name: str, *, overwrite: bool = False) -> bool:
        """Copy ``<run_dir>/<name>`` here (remote run_dir only) when it is missing here, or always with
        ``overwrite``; True when something was copied."""
        if not self.remote:
            return False
        local = self.local_path(name)
        if os.path.exists(local) and not overwrite:
            return False
        remote = paths.join(self.path, name)
        if not paths.exists(remote):
            return False
        if os.path.isdir(local):
            import shutil

            shutil.rmtree(local)
        paths.download(remote, local)
        return True

    def push(self, name: str) -> bool:
        """Copy the local ``name`` (a file, a directory, or an SQLite database: a consistent backup) into
        the remote run_dir when it changed since the last push; True when something was copied."""
        if not self.remote:
            return False
        local = self.local_path(name)
        if not os.path.exists(local):
            return False
        state = _file_state(local)
        if self._pushed.get(name) == state:
            return False
        target = paths.join(self.path, name)
        if name.endswith(".sqlite"):
            snapshot = local + ".upload"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot)
            sqlite_backup(local, snapshot)
            try:
                paths.upload(snapshot, target)
            finally:
                os.unlink(snapshot)
        else:
            paths.upload(local, target)
        self._pushed[name] = state
        return True


def sqlite_backup(src: str, dst: str) -> None:
    """A consistent copy of the SQLite database ``src`` (its WAL included) while others may write it."""
    with contextlib.closing(sqlite3.connect(src)) as s, contextlib.closing(sqlite3.connect(dst)) as d:
        s.backup(d)


def _file_state(path: str) -> tuple:
    """(size, mtime) of a file, its SQLite WAL, or every file of a directory: what says it changed."""
    if os.path.isdir(path):
        return tuple(
            sorted(
                (os.path.join(root, f), *_stat(os.path.join(root, f)))
                for root, _, files in os.walk(path)
                for f in files
            )
        )
    return (_stat(path), _stat(path + "-wal"))


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)
