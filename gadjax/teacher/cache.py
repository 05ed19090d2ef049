"""Persistent teacher-response cache: SQLite in WAL mode, one row per (request, sample index).

Exactly-once semantics: the key is a hash of everything that determines the request (see
:func:`cache_key`), the table's primary key is that hash, and writes are ``INSERT OR IGNORE`` in
autocommit mode. So when two threads or processes race on the same prompt, both may pay for a request
but the cache keeps exactly one answer, and :meth:`ResponseCache.put` returns the stored one so every
consumer sees the same text. A row is committed before ``put`` returns, and the client hands a
response on only after ``put``: a crash after a response reaches the trainer never loses it.

Durability: ``synchronous=NORMAL`` in WAL mode survives a killed process (SIGKILL) with no loss; a power
failure may lose the last commits but never corrupts the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key           TEXT PRIMARY KEY,
    text          TEXT NOT NULL,
    finish_reason TEXT,
    usage         TEXT NOT NULL,
    created       REAL NOT NULL,
    prompt_id     TEXT
)
"""


def cache_key(
    base_url: str,
    model: str,
    messages: Sequence[Mapping[str, str]],
    sampling: Mapping[str, Any],
    sample_index: int,
) -> str:
    """sha256 (hex) of the canonical JSON of the request identity.

    ``messages`` are the messages as SENT (system prompt included). The API key is deliberately not
    part of it: rotating a key must not invalidate the cache, and a hash of a key is still a secret.
    """
    ident = {
        "base_url": base_url.rstrip("/"),
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "sampling": dict(sampling),
        "sample_index": int(sample_index),
    }
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CachedResponse:
    text: str
    finish_reason: str | None
    usage: dict[str, Any]
    created: float


class ResponseCache:
    """SQLite response cache, safe for concurrent threads (one connection each) and processes."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.path = os.fspath(path)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        conn = self._conn()
        # journal_mode is persistent in the file; setting it needs a brief write lock (busy_timeout).
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch the SQLite cache to WAL mode (got {mode})")
        conn.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread (and per process: a forked child must not reuse the parent's).
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(
            self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._conns.append(conn)
        return conn

    def get(self, key: str) -> CachedResponse | None:
        row = (
            self._conn()
            .execute("SELECT text, finish_reason, usage, created FROM responses WHERE key = ?", (key,))
            .fetchone()
        )
        if row is None:
            return None
        return CachedResponse(text=row[0], finish_reason=row[1], usage=json.loads(row[2]), created=row[3])

    def put(
        self,
        key: str,
        text: str,
        finish_reason: str | None,
        usage: Mapping[str, Any] | None,
        prompt_id: str | None = None,
    ) -> tuple[CachedResponse, bool]:
        """Store a response unless the key is already there; commit; return (stored row, inserted).

        When another writer got there first, its row is returned (and ``inserted`` is False).
        """
        now = time.time()
        usage_json = json.dumps(dict(usage or {}), sort_keys=True)
        conn = self._conn()
        cur = conn.execute(
            "INSERT OR IGNORE INTO responses (key, text, finish_reason, usage, created, prompt_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key, text, finish_reason, usage_json, now, prompt_id),
        )
        if cur.rowcount == 1:  # autocommit: durable in the WAL once execute returns
            return CachedResponse(text, finish_reason, json.loads(usage_json), now), True
        stored = self.get(key)
        if stored is None:  # cannot happen: the row that blocked the insert is never deleted
            raise RuntimeError(f"{self.path}: key {key} neither inserted nor found")
        return stored, False

    def __contains__(self, key: str) -> bool:
        return self._conn().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
