"""Online teacher mode: rows without a response go through ``client.prefetch`` and come back joined.

The teacher client (gadjax.teacher) has ``prefetch(items, max_ahead) -> Iterator[(prompt_id, messages,
list[TeacherResponse])]`` yielding in INPUT order while it works up to ``max_ahead`` prompts ahead.
Rows that already carry a response, or were dropped for length before tokenizing the response, skip the
teacher but keep their place in the stream, so the output order is exactly the seeded grain order.

Failed prompts: with a client that has ``iter_results`` (gadjax.teacher.TeacherClient), a prompt whose
answer failed in a way that is the prompt's own (:attr:`TeacherError.skippable`: a refusal, HTTP 400, a
content filter, retries run out) is marked ``dropped="teacher_failed"`` and logged with its row id, so
the batch takes the next row instead; the pipeline counts these and stops past
``DataConfig.teacher_max_failed``. Any other error (spending limit, HTTP 401 / 404) is raised.

Resumability: the client reads ahead of the trainer, so the grain iterator's own state is AHEAD of what
was consumed. Every pulled row is queued together with the grain state right after it; ``state()`` is
the state after the last row handed out. Restoring builds a fresh grain iterator at that state (the old
one may still be touched by the client's worker thread) and a fresh prefetch; prompts already answered
come from the teacher's persistent cache, not the API.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("gadjax.data")


def needs_teacher(element: dict[str, Any]) -> bool:
    return element.get("response") is None and not element.get("dropped")


class TeacherJoin:
    """Iterator of elements with ``response`` filled from the teacher; see module docstring."""

    def __init__(
        self,
        make_parent: Callable[[dict | None], Any],
        client: Any,
        max_ahead: int = 64,
        state: dict | None = None,
        where: Callable[[Any], str] | None = None,
    ):
        self._parent = make_parent(state)
        self._state = self._parent.get_state()
        self._pending: collections.deque = collections.deque()  # (element, grain state after it)
        self._ready: collections.deque = collections.deque()  # teacher results not yet matched
        self._where = where  # example_id -> "file:line", for the log line of a skipped prompt
        # iter_results yields a failed prompt as its error (we may skip it); prefetch would raise it.
        results = getattr(client, "iter_results", None) or client.prefetch
        self._it = iter(results(self._feed(self._parent, self._pending), max_ahead=max_ahead))
        self._done = False

    @staticmethod
    def _feed(parent: Any, pending: collections.deque) -> Iterator[tuple[str, list]]:
        # May run in the client's worker thread: it only touches its own parent and deque.append.
        for element in parent:
            pending.append((element, parent.get_state()))
            if needs_teacher(element):
                yield str(element["example_id"]), element["messages"]  # the client's prompt ids are str

    def state(self) -> dict:
        """Grain state right after the last element returned by ``__next__``."""
        return self._state

    def __iter__(self) -> TeacherJoin:
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._pending:
                element, state = self._pending[0]
                if not needs_teacher(element):
                    self._pending.popleft()
                    self._state = state
                    return element
                if self._ready:
                    self._pending.popleft()
                    self._state = state
                    return self._join(element, self._ready.popleft(), self._where)
            if self._done:
                if self._pending:  # a prompt the client never answered
                    raise RuntimeError(
                        f"teacher client ended without answering prompt id "
                        f"{self._pending[0][0]['example_id']}"
                    )
                raise StopIteration
            try:
                self._ready.append(next(self._it))
            except StopIteration:
                self._done = True

    @staticmethod
    def _join(element: dict[str, Any], result: tuple, where: Callable[[Any], str] | None) -> dict[str, Any]:
        prompt_id, _, responses = result
        if str(prompt_id) != str(element["example_id"]):
            raise RuntimeError(
                f"teacher client returned prompt id {prompt_id} where "
                f"{element['example_id']} was expected (prefetch must keep input order)"
            )
        out = dict(element)
        if isinstance(responses, BaseException):
            if not getattr(responses, "skippable", False):
                raise responses  # the endpoint's fault or a spending limit: every prompt would hit it
            row = f"row {element['example_id']}" + (f" ({where(element['example_id'])})" if where else "")
            log.warning("teacher: skipped %s: %s", row, getattr(responses, "detail", responses))
            out["dropped"] = "teacher_failed"
            out["teacher_error"] = str(getattr(responses, "detail", responses))
            out["from_teacher"] = True
            return out
        first = responses[0] if responses else None
        text = getattr(first, "text", None)
        if not isinstance(text, str) or not text.strip():
            out["dropped"] = "empty_teacher_response"
        else:
            out["response"] = text
            out["teacher_finish_reason"] = getattr(first, "finish_reason", None)
            out["teacher_cached"] = bool(getattr(first, "cached", False))
        out["from_teacher"] = True
        return out

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - a generator running in another thread cannot be closed
                pass
