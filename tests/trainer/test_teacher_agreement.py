"""Multi-host agreement on skipped teacher prompts (gadjax.trainer.steps._next_local_batch), with the
allgather replaced by what the other host would contribute: every host must take the same decision at
the same step, and a host that got its batch unreads it before the stop is checkpointed. per_process
itself (one allgather over real processes) is exercised by tests/test_multihost.py; a 2-process run of
this path is not (minutes of compile on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import ConfigDict

from gadjax.teacher.errors import SpendingLimitReached, SpendingLimitReachedElsewhere, TooManyFailedPrompts
from gadjax.trainer import steps


class _Iter:
    def __init__(self, failed: int, outcome: object):
        self.teacher_failed, self.outcome, self.unread = failed, outcome, False

    def __next__(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def unread_last_batch(self):
        self.unread = True


class _Host:
    """The attributes _next_local_batch reads from a Trainer."""

    def __init__(self, failed: int, outcome: object, limit: int):
        self.teacher = object()
        self.data_iter = _Iter(failed, outcome)
        self.config = ConfigDict({"teacher": {"max_failed_prompts": limit}})
        self.teacher_failed = 0


def _two_hosts(monkeypatch, other: dict[str, int]):
    """This process is host 0 of 2; per_process appends host 1's value for the same call."""
    calls = iter([other["code"], other["failed"]])
    monkeypatch.setattr(steps.jax, "process_count", lambda: 2)
    monkeypatch.setattr(steps, "per_process", lambda mine: np.asarray([int(mine), next(calls)]))


def test_the_sum_over_hosts_decides_and_a_host_with_a_batch_unreads_it(monkeypatch):
    _two_hosts(monkeypatch, {"code": 0, "failed": 2})
    host = _Host(failed=2, outcome={"batch": 1}, limit=3)  # 2 + 2 > 3: neither host alone is past it
    with pytest.raises(
        TooManyFailedPrompts, match=r"^4 prompts .*max_failed_prompts=3 .*process\(es\) \[0, 1\]"
    ):
        steps.StageStepsMixin._next_local_batch(host)
    assert host.data_iter.unread and host.teacher_failed == 4


def test_under_the_limit_every_host_goes_on_and_counts_the_total(monkeypatch):
    _two_hosts(monkeypatch, {"code": 0, "failed": 1})
    host = _Host(failed=1, outcome={"batch": 1}, limit=3)
    assert steps.StageStepsMixin._next_local_batch(host) == {"batch": 1}
    assert host.teacher_failed == 2 and not host.data_iter.unread


def test_a_host_stopped_by_its_own_count_stops_the_other(monkeypatch):
    _two_hosts(monkeypatch, {"code": 2, "failed": 4})  # host 1 raised TooManyFailedPrompts mid-batch
    host = _Host(failed=0, outcome={"batch": 1}, limit=3)
    with pytest.raises(TooManyFailedPrompts):
        steps.StageStepsMixin._next_local_batch(host)
    assert host.data_iter.unread


def test_a_spending_limit_elsewhere_keeps_its_own_exit(monkeypatch):
    _two_hosts(monkeypatch, {"code": 1, "failed": 0})
    host = _Host(failed=9, outcome={"batch": 1}, limit=3)  # past the failure limit too: spending wins
    with pytest.raises(SpendingLimitReachedElsewhere):
        steps.StageStepsMixin._next_local_batch(host)
    _two_hosts(monkeypatch, {"code": 0, "failed": 0})
    own = SpendingLimitReached(
        "p", {"requests": 1, "tokens": 0}, {"max_requests": 1, "max_total_tokens": 0}, None
    )
    host = _Host(failed=0, outcome=own, limit=3)
    with pytest.raises(SpendingLimitReached) as err:
        steps.StageStepsMixin._next_local_batch(host)
    assert err.value is own
