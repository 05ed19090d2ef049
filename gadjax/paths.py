"""One path layer for everything a run reads or writes: local paths and object storage (``gs://``, ``s3://``).

Built on etils ``epath`` (what orbax uses): a local path is a ``pathlib`` path, ``gs://`` goes through
gcsfs and ``s3://`` through s3fs (install it for S3), so a run directory, a checkpoint, an export or a
data file may live on a bucket. String paths are kept at the edges (configs, logs); this module turns
them into ``epath.Path`` and back.

What cannot live on object storage lives on this host's disk under :func:`local_dir` and is copied to /
from the bucket at known points: SQLite caches (WAL needs a real filesystem), libraries that open
local files (safetensors, GGUF readers, tensorflow-datasets' array_record), and files that grow by
appends (metrics.jsonl, TensorBoard events: object storage has no append).

Failures of the storage itself (no such bucket, no credentials, no permission, no network) are
:class:`StorageAccessError`: one line naming the path.

Emulators: gcsfs and google-cloud-storage read ``STORAGE_EMULATOR_HOST``; TensorStore (orbax's array
writer) reads ``TENSORSTORE_GCS_HTTP_URL``. Set both to the same endpoint (tests/gcs_emulator.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://")
# A remote directory that is being (re)written: its files are not a whole export yet (see publish_dir).
INCOMPLETE_MARKER = ".gadjax-incomplete"
LOCAL_DIR_ENV = "GADJAX_LOCAL_DIR"

PathLike = str | os.PathLike


def _configure_fsspec() -> None:
    """gcsfs caches directory listings per process; several processes (hosts, a resumed run) write the
    same bucket, so a cached listing would hide their files. Listings are always read fresh."""
    import fsspec

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs asks the storage-control gRPC API for each bucket's type (hierarchical / zonal); emulators
        # do not serve it, and each ask waits 60 s before falling back to the plain object API.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    for proto in ("gcs", "gs"):
        fsspec.config.conf.setdefault(proto, {}).setdefault("use_listings_cache", False)


_configure_fsspec()


class StorageAccessError(OSError):
    """The storage behind a path cannot be reached or used (bucket, credentials, permission, network)."""


def is_remote(path: PathLike) -> bool:
    """True for object-storage paths (``gs://``, ``s3://``)."""
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def as_path(path: PathLike) -> epath.Path:
    return epath.Path(os.fspath(path))


def absolute(path: PathLike) -> str:
    """An absolute path (local), or the path as given (remote: ``os.path.abspath`` would make
    ``gs://b/x`` into ``<cwd>/gs:/b/x``)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(base: PathLike, *parts: str) -> str:
    return os.fspath(as_path(base).joinpath(*parts))


def exists(path: PathLike) -> bool:
    with access_errors(path):
        return as_path(path).exists()


def isdir(path: PathLike) -> bool:
    with access_errors(path):
        return as_path(path).is_dir()


def makedirs(path: PathLike) -> None:
    """A directory (local); nothing to create on object storage, where prefixes exist by their files."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def read_text(path: PathLike) -> str:
    with access_errors(path):
        return as_path(path).read_text(encoding="utf-8")


def write_text(path: PathLike, text: str) -> None:
    """Write a whole file atomically: readers see the old content or the new, never part of it (local:
    a temporary file renamed over it; object storage: one upload is one object version)."""
    with access_errors(path):
        if is_remote(path):
            as_path(path).write_text(text, encoding="utf-8")
            return
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern, local or remote."""
    if is_remote(pattern):
        scheme, rest = pattern.split("://", 1)
        bucket, _, key = rest.partition("/")
        with access_errors(pattern):
            return sorted(os.fspath(p) for p in epath.Path(f"{scheme}://{bucket}").glob(key))
    import glob as globlib

    return sorted(globlib.glob(pattern))


def local_dir() -> str:
    """This host's working directory for what cannot live on object storage ($GADJAX_LOCAL_DIR, else
    <tmp>/gadjax). Lost with the VM: everything kept here is either a cache or copied to the run dir."""
    return os.environ.get(LOCAL_DIR_ENV) or os.path.join(tempfile.gettempdir(), "gadjax")


def local_mirror(path: PathLike, kind: str = "runs") -> str:
    """The local directory that stands for ``path``: ``path`` itself when local, else a directory
    under :func:`local_dir` named after the URL (readable, and unique by a short hash)."""
    path = absolute(path)
    if not is_remote(path):
        return path
    scheme, rest = path.split("://", 1)
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rest)[-80:]
    return os.path.join(local_dir(), kind, f"{scheme}_{digest}_{safe}")  # ends like the URL (".gguf")


def download(src: PathLike, dst: str) -> None:
    """Copy a file or a directory tree from ``src`` (local or remote) to the local path ``dst``."""
    src_path = as_path(src)
    with access_errors(src):
        if not src_path.is_dir():
            _copy_file(src_path, epath.Path(dst))
            return
        base = os.fspath(src_path).split("://", 1)[-1].rstrip("/")
        for root, _, files in src_path.walk():  # one listing per directory (rglob is refused on GCS)
            rel = os.path.relpath(os.fspath(root).split("://", 1)[-1].rstrip("/"), base)
            for name in files:
                _copy_file(src_path.joinpath(rel, name), epath.Path(dst, rel, name))


def upload(src: str, dst: PathLike) -> None:
    """Copy the local file or directory tree ``src`` to ``dst`` (local or remote), file by file."""
    with access_errors(dst):
        if not os.path.isdir(src):
            _copy_file(epath.Path(src), as_path(dst))
            return
        for root, _, files in os.walk(src):
            rel = os.path.relpath(root, src)
            for name in files:
                target = as_path(dst) if rel == "." else as_path(dst) / rel
                _copy_file(epath.Path(root) / name, target / name)


def _copy_file(src: epath.Path, dst: epath.Path) -> None:
    if not is_remote(dst):
        os.makedirs(os.fspath(dst.parent), exist_ok=True)
    src.copy(dst, overwrite=True)


def localize(path: PathLike, kind: str = "inputs") -> str:
    """A local path with the content of ``path``: ``path`` itself when local, else a copy downloaded
    once under :func:`local_dir` (for libraries that read local files: safetensors, GGUF, array_record).

    The copy is reused when complete (a marker written after the last file); a download cut short is
    redone. A remote directory that is still being written (:data:`INCOMPLETE_MARKER`) is refused.
    """
    if not is_remote(path):
        return os.fspath(path)
    check_complete(path)
    local = local_mirror(path, kind)
    done = local + ".complete"
    if not os.path.exists(done):
        shutil.rmtree(local, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
        download(path, local)
        with open(done, "w", encoding="utf-8") as f:
            f.write(absolute(path) + "\n")
    return local


def check_complete(path: PathLike) -> None:
    """Raise when ``path`` is a directory whose writer has not finished (an export cut short)."""
    marker = as_path(path) / INCOMPLETE_MARKER
    with access_errors(path):
        if marker.exists():
            raise FileNotFoundError(
                f"{os.fspath(path)}: incomplete (its writer stopped before the last file; "
                f"{INCOMPLETE_MARKER} is present): write it again"
            )


def publish_dir(staged: str, out_dir: PathLike) -> None:
    """Move the files of the local directory ``staged`` into ``out_dir`` as one unit for readers.

    ``out_dir`` carries :data:`INCOMPLETE_MARKER` while its files are replaced, so a reader
    (:func:`check_complete`, :func:`localize`) never takes a half-written export: the marker is written
    first and removed last. Local: each file is renamed into place; remote: uploaded. Files of an older
    export that the new one does not have are left alone. ``staged`` is removed.
    """
    marker = as_path(out_dir) / INCOMPLETE_MARKER
    with access_errors(out_dir):
        makedirs(out_dir)
        marker.write_text("being written\n")
        if is_remote(out_dir):
            upload(staged, out_dir)
            shutil.rmtree(staged)
        else:
            for name in os.listdir(staged):
                target = os.path.join(out_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staged, name), target)
            os.rmdir(staged)
        marker.unlink()


# ---- errors ---------------------------------------------------------------------------------------------

_ACCESS_HINTS = (
    ("bucket does not exist", "no such bucket"),
    ("nosuchbucket", "no such bucket"),
    ("default credentials", "no credentials (run `gcloud auth application-default login` or set "
     "GOOGLE_APPLICATION_CREDENTIALS)"),
    ("401", "not authenticated"),
    ("403", "permission denied"),
    ("forbidden", "permission denied"),
    ("cannot connect", "network failure"),
    ("connection refused", "network failure"),
    ("timed out", "network failure"),
    ("name or service not known", "network failure"),
)


def describe_access_error(path: PathLike, err: BaseException) -> str:
    """One line: the path, what kind of failure (when recognised), and the cause."""
    cause = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    low = cause.lower()
    kind = next((what for needle, what in _ACCESS_HINTS if needle in low), "storage error")
    return f"{os.fspath(path)}: {kind} ({cause})"


@contextlib.contextmanager
def access_errors(path: PathLike) -> Iterator[None]:
    """Remote failures other than a plain missing file become StorageAccessError naming ``path``."""
    try:
        yield
    except StorageAccessError:
        raise
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001  gcsfs / aiohttp / google-auth raise many kinds
        if not is_remote(path):
            raise
        raise StorageAccessError(describe_access_error(path, e)) from e


def check_writable(path: PathLike) -> None:
    """Write and delete a probe object under ``path``: a run on a missing bucket, without credentials or
    permission fails here, in one line, before any work (and before anything is written)."""
    probe = as_path(path) / f".gadjax-probe-{os.getpid()}"
    with access_errors(path):
        makedirs(path)
        try:
            probe.write_text("probe\n")
        except FileNotFoundError as e:  # object storage: a new key's "directory" always exists
            if not is_remote(path):
                raise
            raise StorageAccessError(f"{os.fspath(path)}: no such bucket ({type(e).__name__}: {e})") from e
        probe.unlink()
