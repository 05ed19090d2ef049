"""Local server lifecycle: ``python -m gadjax.serve`` in subprocesses (``LocalServer``: the persona teacher,
the judge) that are stopped whatever happens: stop(), atexit, SIGTERM/SIGHUP handlers, PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from typing import Any

_LIVE: list[LocalServer] = []


def _stop_all_servers() -> None:
    for s in list(_LIVE):
        s.stop()


atexit.register(_stop_all_servers)


# The server is started through this bootstrap instead of a preexec_fn (which would make subprocess
# fork a multithreaded jax process): it asks Linux for SIGTERM when its parent dies, so even a SIGKILLed
# demo takes its servers down, then runs `python -m gadjax.serve` with the remaining arguments.
_SERVER_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except OSError:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the demo already died before the death signal was armed\n"
    "sys.argv = ['gadjax.serve'] + sys.argv[2:]\n"
    "runpy.run_module('gadjax.serve', run_name='__main__', alter_sys=True)\n"
)


class LocalServer:
    """``python -m gadjax.serve`` in a subprocess on a free loopback port; stop() always ends it."""

    def __init__(
        self,
        name: str,
        model: str,
        log_path: str,
        *,
        system_prompt: str | None = None,
        max_new_tokens: int = 64,
        max_prompt_tokens: int | None = None,
        max_batch: int = 16,
        batch_wait_ms: float = 300.0,
        seed: int = 0,
    ):
        self.name, self.model, self.log_path = name, model, log_path
        # The serve engine's slot caches are this wide whatever the prompts: its default (the model's
        # positions, up to 4096) made every decode step of the demo's 32-token answers read 4 K columns.
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt
        self.max_new_tokens, self.max_batch, self.seed = max_new_tokens, max_batch, seed
        # Throughput over latency: wait for a full batch (each new padded batch size is a compile).
        self.batch_wait_ms = batch_wait_ms
        self.ready_file = log_path + ".ready"
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    def start(self) -> LocalServer:
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        cmd = [
            sys.executable, "-c", _SERVER_BOOT, str(os.getpid()), "--model", self.model, "--port", "0",
            "--ready-file", self.ready_file, "--served-model-name", self.name,
            "--max-new-tokens", str(self.max_new_tokens), "--max-batch", str(self.max_batch),
            "--batch-wait-ms", str(self.batch_wait_ms),
            *(["--max-prompt-tokens", str(self.max_prompt_tokens)] if self.max_prompt_tokens else []),
            "--seed", str(self.seed), "--log-level", "warning",
        ]  # fmt: skip
        if self.system_prompt:
            cmd += ["--system-prompt", self.system_prompt]  # hidden: never in the student's data
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)  # the server runs its single-device engine
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.started_at = time.time()
        _LIVE.append(self)
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> str:
        """The server's base URL once its ready file appears; raises with its log tail if it dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.path.exists(self.ready_file):
                with open(self.ready_file, encoding="utf-8") as f:
                    self.url = f.read().strip()
                if self.url:
                    return self.url
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the {self.name} server exited with status {self.proc.returncode} before it was "
                    f"ready; its log ({self.log_path}) ends with:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the {self.name} server was not ready after {timeout_s:.0f} s ({self.log_path})")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; idempotent. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.returncode is None:
            self.returncode = self.proc.returncode
            self.stopped_at = time.time()
            self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)
        return self.returncode

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.proc.pid if self.proc else None,
            "url": self.url,
            "persona": bool(self.system_prompt),
            "returncode": self.returncode,
            "running": self.proc is not None and self.proc.poll() is None,
            "log": self.log_path,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
        }


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def _install_signal_handlers() -> None:
    """SIGTERM / SIGHUP become SystemExit in the main thread, so every finally (servers) runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
