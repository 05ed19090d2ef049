"""The trainer's batch fetch on several hosts (gadjax.trainer.steps): a host stopped by its teacher
spending limit stops every host at the same step, and so does the sum over hosts of the prompts the
teacher did not answer past teacher.max_failed_prompts (a host that got its batch unreads it). The other
host's (outcome, skipped) comes from a stand-in for multihost_utils.process_allgather (the real
2-process collectives are in tests/test_multihost.py; this path is not run on 2 real processes)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from gadjax.teacher.errors import SpendingLimitReached, SpendingLimitReachedElsewhere, TooManyFailedPrompts
from gadjax.trainer.steps import StageStepsMixin

LIMIT = SpendingLimitReached(
    "p7", {"requests": 5, "tokens": 40}, {"max_requests": 5, "max_total_tokens": 0}, None
)


class _batches:  # noqa: N801 - reads like the generator it stands in for
    """A BatchIterator stand-in: yields ``items`` (raising the exceptions), with teacher_failed."""

    def __init__(self, *items, failed: int = 0):
        self._items, self.teacher_failed, self.unread = iter(items), failed, False

    def __next__(self):
        item = next(self._items)
        if isinstance(item, Exception):
            raise item
        return item

    def unread_last_batch(self):
        self.unread = True


def _host(batches, teacher=True, max_failed=100):
    host = object.__new__(StageStepsMixin)
    host.data_iter = batches
    host.teacher = object() if teacher else None
    host.config = ConfigDict({"teacher": {"max_failed_prompts": max_failed}})
    return host


@pytest.fixture
def two_hosts(monkeypatch):
    """This process is 0 of 2; ``peer[0]`` is process 1's outcome (0 a batch, 1 its spending limit, 2 its
    failure limit), ``peer[1]`` the prompts it skipped."""
    peer = [0, 0]
    gathered = []

    def allgather(x):
        gathered.append(np.asarray(x))
        return np.stack([np.asarray(x), np.asarray([peer])])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    return peer, gathered


def test_every_host_got_its_batch(two_hosts):
    peer, gathered = two_hosts
    host = _host(_batches({"b": 1}, {"b": 2}))
    assert host._next_local_batch() == {"b": 1} and host._next_local_batch() == {"b": 2}
    assert [g.tolist() for g in gathered] == [[[0, 0]], [[0, 0]]]  # one agreement per step


def test_a_limit_on_another_host_stops_this_one_at_the_same_step(two_hosts):
    peer, _ = two_hosts
    host = _host(_batches({"b": 1}))
    peer[0] = 1
    with pytest.raises(SpendingLimitReachedElsewhere, match=r"process\(es\) \[1\]"):
        host._next_local_batch()


def test_this_hosts_limit_is_raised_as_itself_after_telling_the_others(two_hosts):
    _, gathered = two_hosts
    host = _host(_batches(LIMIT))
    with pytest.raises(SpendingLimitReached) as err:
        host._next_local_batch()
    assert err.value is LIMIT and [g.tolist() for g in gathered] == [[[1, 0]]]


def test_one_host_or_no_teacher_needs_no_agreement(monkeypatch):
    def never(x):
        raise AssertionError("no collective expected")

    monkeypatch.setattr(multihost_utils, "process_allgather", never)
    assert _host(_batches({"b": 1}))._next_local_batch() == {"b": 1}  # one process
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert _host(_batches({"b": 1}), teacher=False)._next_local_batch() == {"b": 1}  # offline corpus
    with pytest.raises(SpendingLimitReached):
        _host(_batches(LIMIT), teacher=False)._next_local_batch()


def test_skipped_prompts_are_summed_over_hosts_and_every_host_stops_at_the_same_step(two_hosts):
    peer, gathered = two_hosts
    peer[1] = 1
    host = _host(_batches({"b": 1}, failed=1), max_failed=3)
    assert host._next_local_batch() == {"b": 1} and host.teacher_failed == 2  # 1 + 1 <= 3: go on
    peer[1] = 2
    batches = _batches({"b": 2}, failed=2)
    host = _host(batches, max_failed=3)  # 2 + 2 > 3 although neither host alone is past it
    with pytest.raises(
        TooManyFailedPrompts, match=r"^4 prompts .*max_failed_prompts=3 .*process\(es\) \[0, 1\]"
    ):
        host._next_local_batch()
    assert batches.unread and gathered[-1].tolist() == [[0, 2]]


def test_a_host_past_the_limit_on_its_own_stops_the_other_but_a_spending_limit_wins(two_hosts):
    peer, _ = two_hosts
    peer[:] = [2, 5]  # process 1 raised TooManyFailedPrompts half-way through its batch
    batches = _batches({"b": 1})
    with pytest.raises(TooManyFailedPrompts, match=r"^5 prompts"):
        _host(batches, max_failed=3)._next_local_batch()
    assert batches.unread
    peer[:] = [1, 0]  # a spending limit elsewhere keeps its own exit status
    with pytest.raises(SpendingLimitReachedElsewhere):
        _host(_batches(TooManyFailedPrompts(9, 3)), max_failed=3)._next_local_batch()


def test_one_host_past_the_failure_limit_needs_no_collective(monkeypatch):
    def never(x):
        raise AssertionError("no collective expected")

    monkeypatch.setattr(multihost_utils, "process_allgather", never)
    with pytest.raises(TooManyFailedPrompts, match=r"^4 prompts .*max_failed_prompts=3; each"):
        _host(_batches({"b": 1}, failed=4), max_failed=3)._next_local_batch()
    assert _host(_batches({"b": 1}, failed=4), max_failed=-1)._next_local_batch() == {"b": 1}  # no limit


def test_an_endpoint_failure_on_one_host_stops_every_host(two_hosts):
    """HTTP 401 / 404 or no key: nothing to skip. The failing host raises its error, the others a
    TeacherFailedElsewhere at the same step (instead of waiting in the step's collectives)."""
    from gadjax.teacher.errors import TeacherError, TeacherFailedElsewhere

    peer, gathered = two_hosts
    own = TeacherError("p1", "HTTP 401: invalid api key", status=401)
    with pytest.raises(TeacherError) as err:
        _host(_batches(own))._next_local_batch()
    assert err.value is own and gathered[-1].tolist() == [[3, 0]]
    peer[0] = 3
    batches = _batches({"b": 1})
    with pytest.raises(TeacherFailedElsewhere, match=r"process\(es\) \[1\]"):
        _host(batches)._next_local_batch()
    assert batches.unread
