"""gadjax.paths and gadjax.run_dir against a real GCS emulator (fake-gcs-server on loopback; no mocks):
gs:// reads, writes, globs and downloads, the publish protocol of exports, orbax checkpoints in a bucket,
SQLite caches copied to and from a bucket, and storage failures as one line naming the path."""

from __future__ import annotations

import os
import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadjax import paths
from gadjax.run_dir import RunDir


@pytest.fixture
def bucket(gcs, tmp_path, monkeypatch):
    """A fresh bucket per test, and a fresh local directory (a new VM's empty disk)."""
    name = f"b-{os.urandom(4).hex()}"
    gcs.create_bucket(name)
    monkeypatch.setenv(paths.LOCAL_DIR_ENV, str(tmp_path / "local"))
    return f"gs://{name}"


def test_absolute_keeps_urls_and_mirror_names_them(bucket, tmp_path):
    assert paths.absolute(f"{bucket}/run/") == f"{bucket}/run"
    assert paths.absolute("rel/x") == os.path.abspath("rel/x")
    mirror = paths.local_mirror(f"{bucket}/models/m.gguf", "inputs")
    assert mirror.startswith(str(tmp_path / "local")) and mirror.endswith("m.gguf")
    assert paths.local_mirror("/a/local/dir") == "/a/local/dir"


def test_text_glob_download_and_upload_round_trip(bucket, tmp_path):
    paths.write_text(f"{bucket}/d/a.jsonl", "1\n")
    paths.write_text(f"{bucket}/d/b.jsonl", "2\n")
    paths.write_text(f"{bucket}/d/sub/c.txt", "3\n")
    assert paths.read_text(f"{bucket}/d/a.jsonl") == "1\n"
    assert paths.glob(f"{bucket}/d/*.jsonl") == [f"{bucket}/d/a.jsonl", f"{bucket}/d/b.jsonl"]
    assert paths.isdir(f"{bucket}/d") and not paths.exists(f"{bucket}/nothing")
    paths.download(f"{bucket}/d", str(tmp_path / "dl"))
    assert sorted(os.listdir(tmp_path / "dl")) == ["a.jsonl", "b.jsonl", "sub"]
    assert (tmp_path / "dl" / "sub" / "c.txt").read_text() == "3\n"
    paths.upload(str(tmp_path / "dl"), f"{bucket}/copy")
    assert paths.read_text(f"{bucket}/copy/sub/c.txt") == "3\n"


def test_publish_dir_is_refused_by_readers_until_complete(bucket, tmp_path):
    out = f"{bucket}/export/student"
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text("{}")
    paths.publish_dir(str(staged), out)
    assert not staged.exists()
    assert not paths.exists(f"{out}/{paths.INCOMPLETE_MARKER}")
    local = paths.localize(out)
    assert os.listdir(local) == ["config.json"]
    # A writer that died mid-way leaves the marker: readers refuse the directory, naming it.
    paths.write_text(f"{out}/{paths.INCOMPLETE_MARKER}", "being written\n")
    with pytest.raises(FileNotFoundError, match=r"export/student: incomplete"):
        paths.localize(f"{bucket}/export/student")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        paths.check_complete(out)


def test_localize_downloads_once_and_redoes_a_cut_download(bucket):
    paths.write_text(f"{bucket}/m/config.json", '{"a": 1}')
    local = paths.localize(f"{bucket}/m")
    assert open(os.path.join(local, "config.json")).read() == '{"a": 1}'
    paths.write_text(f"{bucket}/m/config.json", '{"a": 2}')
    assert paths.localize(f"{bucket}/m") == local  # complete copy reused: no second download
    assert open(os.path.join(local, "config.json")).read() == '{"a": 1}'
    os.unlink(local + ".complete")  # as if the first download had been cut short
    assert open(os.path.join(paths.localize(f"{bucket}/m"), "config.json")).read() == '{"a": 2}'


def test_orbax_checkpoints_in_a_bucket_save_restore_and_rotate(bucket):
    from gadjax.checkpoint import RunCheckpointer

    ckpt = RunCheckpointer(f"{bucket}/run/checkpoints", keep=2)
    assert ckpt.directory == f"{bucket}/run/checkpoints"  # not <cwd>/gs:/...
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    for step in (1, 2, 3):
        ckpt.save(step, {"g_params": jax.tree.map(lambda x, s=step: x * s, tree)}, {"step": step})
    ckpt.close()
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))
    again = RunCheckpointer(f"{bucket}/run/checkpoints")
    assert again.latest_step() == 3
    trees, meta = again.restore(None, {"g_params": tree})
    np.testing.assert_array_equal(trees["g_params"]["w"], np.arange(6.0).reshape(2, 3) * 3)
    assert meta == {"step": 3}
    assert paths.exists(f"{bucket}/run/checkpoints/3/commit_success.txt")
    assert not paths.exists(f"{bucket}/run/checkpoints/1")  # keep=2 rotated it out
    again.close()


def test_run_dir_pushes_sqlite_snapshots_and_a_new_host_fetches_them(bucket, tmp_path, monkeypatch):
    run = RunDir(f"{bucket}/run")
    db = run.local_path("teacher_cache.p0.sqlite")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k TEXT)")
    conn.execute("INSERT INTO t VALUES ('answer')")
    conn.commit()  # still open, rows in the WAL: the push must take them (a backup, not a file copy)
    assert run.push("teacher_cache.p0.sqlite")
    assert not run.push("teacher_cache.p0.sqlite")  # unchanged: not uploaded again
    conn.close()
    monkeypatch.setenv(paths.LOCAL_DIR_ENV, str(tmp_path / "new-vm"))
    fresh = RunDir(f"{bucket}/run")
    assert fresh.local != run.local
    assert fresh.fetch("teacher_cache.p0.sqlite")
    rows = sqlite3.connect(fresh.local_path("teacher_cache.p0.sqlite")).execute("SELECT k FROM t").fetchall()
    assert rows == [("answer",)]
    assert not fresh.fetch("teacher_cache.p0.sqlite")  # here already: kept


def test_local_run_dir_needs_no_copies(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert run.local == str(tmp_path / "run") and not run.remote
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert not run.push("metrics.jsonl") and not run.fetch("metrics.jsonl")


def test_a_missing_bucket_is_one_line_naming_the_path(gcs):
    with pytest.raises(paths.StorageAccessError) as err:
        paths.check_writable("gs://no-such-bucket-here/run")
    msg = str(err.value)
    assert msg.startswith("gs://no-such-bucket-here/run: no such bucket") and "\n" not in msg


@pytest.mark.slow
def test_a_network_failure_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """Nothing listens at the endpoint: gcsfs retries (about 30 s), then one line names the path."""
    from tests.gcs_emulator import _free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv("FSSPEC_GCS_TOKEN", "anon")
    from tests.gcs_emulator import _forget_clients

    _forget_clients()  # a client made for another endpoint is not reused
    try:
        with pytest.raises(paths.StorageAccessError) as err:
            paths.check_writable("gs://bucket/run")
    finally:
        _forget_clients()
    msg = str(err.value)
    assert msg.startswith("gs://bucket/run: network failure") and "\n" not in msg
