"""Persistent teacher-response cache: SQLite in WAL mode, one row per (request, sample index).

Exactly-once semantics: the key is a hash of everything that determines the request (see
:func:`cache_key`), the table's primary key is that hash, and writes are ``INSERT OR IGNORE`` in
autocommit mode. So when two threads or processes race on the same prompt, both may pay for a request
but the cache keeps exactly one answer, and :meth:`ResponseCache.put` returns the stored one so every
consumer sees the same text. A row is committed before ``put`` returns, and the client hands a
response on only after ``put``: a crash after a response reaches the trainer never loses it.

Durability: ``synchronous=NORMAL`` in WAL mode survives a killed process (SIGKILL) with no loss; a power
failure may lose the last commits but never corrupts the file.

Spend and failures (schema version 1, ``PRAGMA user_version``): the file also keeps what was paid over
every run that used it (table ``spend``: HTTP requests sent, prompt and completion tokens reported), so
spending limits are totals for the cache, not for one invocation; and the prompts the teacher would not
answer (table ``failures``: refusals, HTTP 400, content filters; and prompts whose retries ran out), so a
rerun does not pay to be refused again. A version-0 file (responses only) is migrated in place when
opened: the two tables are added and ``spend`` starts from the usage stored with each response (one
request per response; retries and refusals of earlier runs were not recorded and are not counted).
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
SCHEMA_VERSION = 1
_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS spend (
        id                INTEGER PRIMARY KEY CHECK (id = 0),
        requests          INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        updated           REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS failures (
        key       TEXT PRIMARY KEY,
        prompt_id TEXT,
        status    INTEGER,
        message   TEXT NOT NULL,
        permanent INTEGER NOT NULL,
        created   REAL NOT NULL
    )""",
)


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


@dataclasses.dataclass(frozen=True)
class CachedFailure:
    """A prompt the teacher did not answer. ``permanent``: a refusal / HTTP 4xx / content filter, which
    asking again would only repeat (and pay for); otherwise the retries ran out (a rerun asks again)."""

    prompt_id: str | None
    status: int | None
    message: str
    permanent: bool
    created: float


def _int_usage(usage: Mapping[str, Any], field: str) -> int:
    v = usage.get(field)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


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
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a version-0 file (responses only) to version 1 in place, once (see module docstring)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")  # one migrating writer; the others wait, then see version 1
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # pragma: no cover - a newer gadjax wrote it
                raise RuntimeError(f"{self.path}: cache schema version {version} is newer than this gadjax")
            if version < SCHEMA_VERSION:
                for stmt in _SCHEMA_V1:
                    conn.execute(stmt)
                requests = prompt = completion = 0
                for (usage_json,) in conn.execute("SELECT usage FROM responses"):
                    try:
                        usage = json.loads(usage_json)
                    except ValueError:
                        usage = {}
                    usage = usage if isinstance(usage, dict) else {}
                    requests += 1
                    prompt += _int_usage(usage, "prompt_tokens")
                    completion += _int_usage(usage, "completion_tokens")
                conn.execute(
                    "INSERT OR IGNORE INTO spend VALUES (0, ?, ?, ?, ?)",
                    (requests, prompt, completion, time.time()),
                )
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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

    # ---- spend: totals over every run that used this file
    def add_spend(self, requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Add to the totals (committed when this returns)."""
        self._conn().execute(
            "UPDATE spend SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
            "completion_tokens = completion_tokens + ?, updated = ? WHERE id = 0",
            (int(requests), int(prompt_tokens), int(completion_tokens), time.time()),
        )

    def spend(self) -> dict[str, int]:
        """``{requests, prompt_tokens, completion_tokens}`` paid through this file, all runs together."""
        row = (
            self._conn()
            .execute("SELECT requests, prompt_tokens, completion_tokens FROM spend WHERE id = 0")
            .fetchone()
        )
        return dict(zip(("requests", "prompt_tokens", "completion_tokens"), row or (0, 0, 0), strict=True))

    # ---- failures: prompts the teacher did not answer
    def put_failure(
        self, key: str, prompt_id: str | None, status: int | None, message: str, permanent: bool
    ) -> None:
        """Record (or overwrite: the latest outcome wins) a failed request."""
        self._conn().execute(
            "INSERT OR REPLACE INTO failures (key, prompt_id, status, message, permanent, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key, prompt_id, status, message, int(bool(permanent)), time.time()),
        )

    def get_failure(self, key: str) -> CachedFailure | None:
        row = (
            self._conn()
            .execute(
                "SELECT prompt_id, status, message, permanent, created FROM failures WHERE key = ?", (key,)
            )
            .fetchone()
        )
        return None if row is None else CachedFailure(row[0], row[1], row[2], bool(row[3]), row[4])

    def clear_failure(self, key: str) -> None:
        """Forget a failure (the prompt was answered after all)."""
        self._conn().execute("DELETE FROM failures WHERE key = ?", (key,))

    def status(self) -> dict[str, int]:
        """Counts for ``collect --status``: answered (stored responses), failed (permanent / retries out),
        and the spend totals."""
        conn = self._conn()
        perm, transient = conn.execute(
            "SELECT COALESCE(SUM(permanent), 0), COALESCE(SUM(1 - permanent), 0) FROM failures"
        ).fetchone()
        return {
            "answered": len(self),
            "failed_permanent": int(perm),
            "failed_retries_exhausted": int(transient),
            **self.spend(),
        }

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
