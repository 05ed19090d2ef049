"""The trainer's batch fetch on several hosts (gadjax.trainer.steps): a host stopped by its teacher
spending limit stops every host at the same step. The other host's flag comes from a stand-in for
multihost_utils.process_allgather (the real 2-process collectives are in tests/test_multihost.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from gadjax.teacher.errors import SpendingLimitReached, SpendingLimitReachedElsewhere
from gadjax.trainer.steps import StageStepsMixin

LIMIT = SpendingLimitReached(
    "p7", {"requests": 5, "tokens": 40}, {"max_requests": 5, "max_total_tokens": 0}, None
)


def _batches(*items):
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def _host(batches, teacher=True):
    host = object.__new__(StageStepsMixin)
    host.data_iter = batches
    host.teacher = object() if teacher else None
    return host


@pytest.fixture
def two_hosts(monkeypatch):
    """This process is 0 of 2; ``peer[0]`` is whether process 1 failed to get its batch."""
    peer = [False]
    gathered = []

    def allgather(x):
        gathered.append(np.asarray(x))
        return np.stack([np.asarray(x), np.asarray([peer[0]])])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    return peer, gathered


def test_every_host_got_its_batch(two_hosts):
    peer, gathered = two_hosts
    host = _host(_batches({"b": 1}, {"b": 2}))
    assert host._next_local_batch() == {"b": 1} and host._next_local_batch() == {"b": 2}
    assert [g.tolist() for g in gathered] == [[False], [False]]  # one agreement per step


def test_a_limit_on_another_host_stops_this_one_at_the_same_step(two_hosts):
    peer, _ = two_hosts
    host = _host(_batches({"b": 1}))
    peer[0] = True
    with pytest.raises(SpendingLimitReachedElsewhere, match=r"process\(es\) \[1\]"):
        host._next_local_batch()


def test_this_hosts_limit_is_raised_as_itself_after_telling_the_others(two_hosts):
    _, gathered = two_hosts
    host = _host(_batches(LIMIT))
    with pytest.raises(SpendingLimitReached) as err:
        host._next_local_batch()
    assert err.value is LIMIT and [g.tolist() for g in gathered] == [[True]]


def test_one_host_or_no_teacher_needs_no_agreement(monkeypatch):
    def never(x):
        raise AssertionError("no collective expected")

    monkeypatch.setattr(multihost_utils, "process_allgather", never)
    assert _host(_batches({"b": 1}))._next_local_batch() == {"b": 1}  # one process
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert _host(_batches({"b": 1}), teacher=False)._next_local_batch() == {"b": 1}  # offline corpus
    with pytest.raises(SpendingLimitReached):
        _host(_batches(LIMIT), teacher=False)._next_local_batch()
