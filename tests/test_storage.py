"""A failed write (a full disk, simulated by a real file-size limit: RLIMIT_FSIZE makes the kernel refuse
the write with EFBIG) is one clear StorageWriteError, and nothing committed is lost: gadjax.storage, the
orbax RunCheckpointer and the Hugging Face export."""

from __future__ import annotations

import contextlib
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gadjax.checkpoint import RunCheckpointer
from gadjax.models.decoder import Decoder
from gadjax.models.hf_export import save_hf_checkpoint
from gadjax.storage import StorageWriteError, write_dir_when_complete
from tests.tiny_models import tiny_model_config


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Files of this process may not grow past ``nbytes`` (the soft limit; restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _files(d) -> dict[str, bytes]:
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def test_a_complete_write_replaces_its_files_and_leaves_others(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("old")
    (out / "README.md").write_text("the user's notes")
    with write_dir_when_complete(str(out), "export") as partial:
        assert not os.path.exists(os.path.join(partial, "config.json"))  # a fresh scratch directory
        with open(os.path.join(partial, "config.json"), "w") as f:
            f.write("new")
    assert _files(out) == {"README.md": b"the user's notes", "config.json": b"new"}
    assert not (tmp_path / "export.partial").exists()


def test_a_failed_write_keeps_the_previous_export_and_says_so(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous weights")
    with pytest.raises(StorageWriteError) as err, file_size_limit(1000):
        with write_dir_when_complete(str(out), "export") as partial:
            with open(os.path.join(partial, "model.safetensors"), "wb") as f:
                f.write(b"x" * 5000)
    msg = str(err.value)
    assert msg.startswith(f"export could not be written to {out} (") and "File too large" in msg
    assert "The previous export there is unchanged" in msg and "--config.resume=true" in msg
    assert _files(out) == {"model.safetensors": b"previous weights"}
    assert not (tmp_path / "export.partial").exists()


def test_an_error_that_is_not_a_write_passes_through_unchanged(tmp_path):
    with pytest.raises(KeyError, match="a bug"):
        with write_dir_when_complete(str(tmp_path / "export"), "export"):
            raise KeyError("a bug")
    assert not (tmp_path / "export.partial").exists() and not (tmp_path / "export").exists()


def test_hf_export_on_a_full_disk_keeps_the_previous_export(tmp_path):
    model = Decoder(tiny_model_config(), rngs=nnx.Rngs(0))
    out = str(tmp_path / "export")
    save_hf_checkpoint(model, out)
    before = _files(out)
    with pytest.raises(StorageWriteError, match="Hugging Face export could not be written") as err:
        with file_size_limit(4096):  # the weights file is ~50 KB
            save_hf_checkpoint(Decoder(tiny_model_config(), rngs=nnx.Rngs(1)), out)
    assert "The previous Hugging Face export there is unchanged" in str(err.value)
    assert _files(out) == before


def test_checkpoint_on_a_full_disk_is_a_clear_error_and_the_last_good_one_survives(tmp_path):
    """keep=1: the rotation must not delete checkpoint 1 before checkpoint 2 commits, and 2 never does."""
    ckpt = RunCheckpointer(str(tmp_path / "ckpt"), keep=1)
    small = {"g_params": {"w": jnp.arange(4.0)}}
    ckpt.save(1, small, {"step": 1})
    ckpt.wait()
    big = {"g_params": {"w": jax.random.normal(jax.random.key(0), (100_000,))}}  # ~400 KB, incompressible
    with pytest.raises(StorageWriteError) as err, file_size_limit(20_000):
        ckpt.save(2, big, {"step": 2}, force=True)
        ckpt.wait()
    msg = str(err.value)
    assert (
        msg.startswith("checkpoint 2 could not be written to")
        and "Committed checkpoints [1] are intact" in msg
    )
    ckpt.close()  # the failure was reported once; closing does not raise it again

    again = RunCheckpointer(str(tmp_path / "ckpt"), keep=1)
    trees, meta = again.restore(None, {"g_params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}})
    assert meta["step"] == 1 and np.array_equal(np.asarray(trees["g_params"]["w"]), np.arange(4.0))
    again.save(3, small, {"step": 3})  # with space again, the run goes on
    again.close()
    assert again.latest_step() == 3
