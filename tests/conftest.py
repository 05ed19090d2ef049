"""Test setup: an emulated 8-device CPU mesh, float32, set before jax is imported."""

import os

from gadjax.parallel.cpu_flags import with_cpu_devices  # noqa: E402  (no jax import)

# 8 emulated devices, with XLA:CPU's collective-order fix (gadjax/parallel/cpu_flags.py). XLA:CPU aborts
# the process when a device waits 40 s at a collective ("may be stuck"): on 2 cores running two test
# workers, the 8 emulated devices of a step can be starved that long without any deadlock, so the limit
# is 600 s. The subprocesses the tests start inherit these flags.
os.environ["XLA_FLAGS"] = with_cpu_devices(
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_collective_call_terminate_timeout_seconds=600 --xla_cpu_collective_timeout_seconds=600",
    8,
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Programs compiled by one test (or one training subprocess) are reused by the next ones with the same
# shapes: the 8-device CPU compiles dominate the suite's time otherwise.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/gadjax-test-jax-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_collection_modifyitems(config, items):
    """Files with slow tests run first (a stable sort: files and tests otherwise keep their order). `make
    test`'s xdist workers take whole files in this order, so the long end-to-end files start early
    instead of running alone at the end while the other worker idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


import pytest  # noqa: E402  (after the environment above is set)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A fake-gcs-server on loopback for the module's tests (tests/gcs_emulator.py): every GCS client of
    the project (gcsfs, TensorStore) reaches it through the environment it sets, restored afterwards."""
    from tests.gcs_emulator import GcsEmulator

    with GcsEmulator(str(tmp_path_factory.mktemp("gcs"))) as emulator:
        yield emulator
