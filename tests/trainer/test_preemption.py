"""StopRequest (gadjax.trainer.preemption): a signal becomes a flag checked between steps."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from gadjax.trainer.preemption import PREEMPTED_EXIT_CODE, Preempted, StopRequest


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.agreed() is None and not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill returns
        assert stop.requested and stop.agreed() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        assert stop.agreed() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_interrupts_at_once():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.agreed() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_inert_outside_the_main_thread():
    seen = {}

    def body():
        with StopRequest() as stop:
            seen["previous"] = dict(stop._previous)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["previous"] == {}  # no handler installed (signal.signal would raise there)


def test_preempted_message_and_exit_code():
    e = Preempted(7, "SIGTERM")
    assert e.step == 7 and "after step 7" in str(e) and "--config.resume=true" in str(e)
    assert PREEMPTED_EXIT_CODE == 75  # documented in the README (EX_TEMPFAIL)
