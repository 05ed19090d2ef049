"""Graceful stop on SIGTERM / SIGINT: finish the step, save a checkpoint, exit with a resumable status.

Preemptible and spot TPU VMs, maintenance events and `tpu/launch.sh --stop` all deliver SIGTERM. The
handler only raises a flag; the training loop checks it between steps, so a step is never cut in half and
the checkpoint it saves is one that `--config.resume=true` restores bitwise. On a multi-host job every host
must save the SAME step (orbax saves collectively), so the flag is agreed across hosts with a tiny
allgather each step: one host told to stop stops them all at the same step boundary.

A second SIGINT (Ctrl-C twice) is the impatient user: it raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry". A run that exits with it
# has saved a checkpoint at a step boundary; tpu/launch.sh restarts it with --config.resume=true.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Training stopped at a step boundary on a signal; the checkpoint of ``step`` is committed."""

    def __init__(self, step: int, signame: str):
        super().__init__(
            f"stopped by {signame} after step {step}; checkpoint {step} is saved. "
            "Continue with --config.resume=true"
        )
        self.step, self.signame = step, signame


class StopRequest:
    """Installs SIGTERM / SIGINT handlers for the duration of a ``with`` block (main thread only; in other
    threads it is inert) and restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signame: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signame is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        if self.signame is None:
            self.signame = name
            log.warning("%s received: finishing this step, then saving a checkpoint and stopping", name)

    @property
    def requested(self) -> bool:
        """This host was signalled."""
        return self.signame is not None

    def agreed(self) -> str | None:
        """The signal name when ANY host was signalled (the same answer on every host), else None.
        Multi-host: one allgather of a flag; every host must call this at the same step."""
        import jax

        from gadjax.parallel.distributed import per_process

        if jax.process_count() == 1:
            return self.signame
        codes = {name: i + 1 for i, name in enumerate(sorted(s.name for s in self.SIGNALS))}
        everyone = per_process(codes.get(self.signame or "", 0))
        if not everyone.any():
            return None
        first = int(everyone[everyone > 0].min())
        return {v: k for k, v in codes.items()}[first]
