"""ResponseCache: key identity, exactly-once storage under concurrent threads and processes, WAL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

from gadjax.teacher.cache import ResponseCache, cache_key

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}


def test_key_covers_every_request_field_but_not_the_key():
    base = cache_key("http://h/v1", "m", MSGS, SAMPLING, 0)
    assert base == cache_key("http://h/v1/", "m", MSGS, dict(reversed(list(SAMPLING.items()))), 0)
    variants = [
        cache_key("http://other/v1", "m", MSGS, SAMPLING, 0),
        cache_key("http://h/v1", "m2", MSGS, SAMPLING, 0),
        cache_key("http://h/v1", "m", MSGS[1:], SAMPLING, 0),  # system prompt is part of the identity
        cache_key("http://h/v1", "m", MSGS, {**SAMPLING, "temperature": 0.7}, 0),
        cache_key("http://h/v1", "m", MSGS, {**SAMPLING, "max_tokens": 17}, 0),
        cache_key("http://h/v1", "m", MSGS, SAMPLING, 1),
    ]
    assert len({base, *variants}) == 7
    assert len(base) == 64 and int(base, 16) >= 0


def test_put_get_roundtrip_and_first_writer_wins(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    with ResponseCache(path) as c:
        assert c.get("k") is None and "k" not in c
        stored, inserted = c.put("k", "first", "stop", {"prompt_tokens": 3}, prompt_id="p0")
        assert inserted and stored.text == "first"
        stored, inserted = c.put("k", "second", "length", {}, prompt_id="p0")
        assert not inserted and stored.text == "first" and stored.finish_reason == "stop"
        assert c.get("k").usage == {"prompt_tokens": 3} and len(c) == 1
    db = sqlite3.connect(path)  # an independent reader sees the committed row and WAL mode
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT text, prompt_id FROM responses").fetchall() == [("first", "p0")]


def test_threads_store_each_key_once(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    keys = [f"k{i}" for i in range(100)]
    got: dict[tuple[int, str], str] = {}
    inserted = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for k in keys:
            row, ins = cache.put(k, f"w{w}-{k}", "stop", {})
            with lock:
                got[(w, k)] = row.text
                inserted.append(ins)

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(cache) == 100 and sum(inserted) == 100
    for k in keys:  # every writer was handed the one stored answer
        assert {got[(w, k)] for w in range(6)} == {cache.get(k).text}
    assert cache.integrity_check() == "ok"
    cache.close()


_WRITER = """
import json, sys, threading
from gadjax.teacher.cache import ResponseCache
path, tag = sys.argv[1], sys.argv[2]
c = ResponseCache(path)
out = {}
def run(t):
    for i in range(150):
        row, ins = c.put(f"k{i}", f"{tag}-{t}", "stop", {"n": i})
        out[f"k{i}/{t}"] = [row.text, ins]
ts = [threading.Thread(target=run, args=(t,)) for t in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""


def test_processes_store_each_key_once(tmp_path):
    path = str(tmp_path / "c.sqlite")
    env = {**os.environ, "PYTHONPATH": REPO}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, path, f"proc{p}"], stdout=subprocess.PIPE,
                              env=env, text=True) for p in range(3)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(db.execute("SELECT key, text FROM responses").fetchall())
    assert len(rows) == 150
    assert sum(ins for o in outs for _, ins in o.values()) == 150  # exactly one insert per key
    for o in outs:
        for k_t, (text, _) in o.items():
            assert text == rows[k_t.split("/")[0]]


def test_a_version_0_cache_is_migrated_in_place_and_spend_is_recorded(tmp_path):
    """A cache written before spend tracking (responses table only, user_version 0) opens: its responses
    are readable, spend starts from their stored usage, and new spend adds to it across reopenings."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, finish_reason TEXT, "
        "usage TEXT NOT NULL, created REAL NOT NULL, prompt_id TEXT)"
    )
    rows = [("k1", "a", "stop", json.dumps({"prompt_tokens": 3, "completion_tokens": 5}), 1.0, "p1"),
            ("k2", "b", "stop", json.dumps({}), 2.0, "p2")]  # fmt: skip
    db.executemany("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    with ResponseCache(path) as c:
        assert c.get("k1").text == "a" and len(c) == 2
        assert c.spend() == {"requests": 2, "prompt_tokens": 3, "completion_tokens": 5}
        c.add_spend(requests=1, prompt_tokens=10, completion_tokens=1)
        c.put_failure("k3", "p3", 400, "HTTP 400: nope", permanent=True)
    with ResponseCache(path) as c:  # reopened: no second migration, totals kept
        assert c.spend() == {"requests": 3, "prompt_tokens": 13, "completion_tokens": 6}
        assert c.get_failure("k3").permanent and c.get_failure("k3").status == 400
        assert c.status()["failed_permanent"] == 1 and c.status()["answered"] == 2
        c.clear_failure("k3")
        assert c.get_failure("k3") is None
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
