"""Writing a run's files safely: a failed write (a full disk, a quota, a file-size limit) is one clear
error that says what was kept, and an export's files replace the old ones only once all are written.

Checkpoints (gadjax.checkpoint) and Hugging Face exports (gadjax.models.hf_export) both go through here, so a
week-long run that fills its disk stops with ``StorageWriteError`` (``gadjax.train`` exits 74) and leaves
every committed checkpoint and the previous export as they were.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from gadjax import paths

STORAGE_ERROR_EXIT_CODE = 74  # EX_IOERR (sysexits.h): a checkpoint or export could not be written


class StorageWriteError(Exception):
    """A checkpoint or export could not be written; the message says where, why and what is intact."""


def free_space(path: str) -> str:
    """Free space on the filesystem holding ``path`` (its nearest existing ancestor), for messages."""
    if paths.is_remote(path):
        return "object storage"
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        return f"{shutil.disk_usage(probe).free / 2**30:.2f} GiB free there"
    except OSError:
        return "free space unknown"


def write_failure(what: str, path: str, err: BaseException, kept: str) -> StorageWriteError:
    """The error for a failed write of ``what`` to ``path``: the cause in one line, what ``kept`` intact,
    the free space and what to do."""
    cause = " ".join(f"{type(err).__name__}: {err}".split())
    if len(cause) > 400:
        cause = cause[:400] + " ..."
    return StorageWriteError(
        f"{what} could not be written to {path} ({cause}). {kept} "
        f"Free space ({free_space(path)}) or point the run elsewhere, then resume with --config.resume=true."
    )


def is_write_error(err: BaseException) -> bool:
    """An OSError, or safetensors' error for a failed file write (it wraps the OS error)."""
    return isinstance(err, OSError) or type(err).__name__ == "SafetensorError"


@contextlib.contextmanager
def write_dir_when_complete(out_dir: str, what: str) -> Iterator[str]:
    """Yield a local scratch directory to write ``out_dir``'s new files into; on success they are
    published into ``out_dir`` (local or ``gs://``) by :func:`gadjax.paths.publish_dir`, which marks the
    directory incomplete while its files are replaced, so no reader takes a half-written export. Other
    files there are left alone. On a failed write the scratch directory is removed and ``out_dir`` (a
    previous export) is untouched."""
    # Local: beside out_dir (same filesystem: each file is then a rename); remote: on this host's disk.
    partial = paths.local_mirror(out_dir, "staging") if paths.is_remote(out_dir) else out_dir.rstrip(os.sep)
    partial += ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # a crash of an earlier attempt
    try:
        os.makedirs(partial)
        yield partial
    except Exception as e:
        shutil.rmtree(partial, ignore_errors=True)
        if not is_write_error(e):
            raise
        kept = f"The previous {what} there is unchanged." if paths.isdir(out_dir) else "Nothing was written."
        raise write_failure(what, out_dir, e, kept) from e
    try:
        paths.publish_dir(partial, out_dir)
    except Exception as e:
        shutil.rmtree(partial, ignore_errors=True)
        if not is_write_error(e):
            raise
        kept = f"{out_dir} is marked {paths.INCOMPLETE_MARKER} (readers refuse it) until a write completes."
        raise write_failure(what, out_dir, e, kept) from e
