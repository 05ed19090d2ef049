"""What can go wrong with a teacher request: a prompt the teacher could not answer (TeacherError; with
``skippable`` when the fault is the prompt's, so a run may skip it and go on), a spending limit reached
(SpendingLimitReached: stop, do not count it as a failure), too many prompts skipped
(TooManyFailedPrompts: the run stops cleanly), and one failed attempt that may be retried (_Retry,
internal to the client)."""

from __future__ import annotations


class TeacherError(RuntimeError):
    """A prompt the teacher could not answer. ``str()`` names the prompt id and the (last) failure."""

    def __init__(
        self,
        prompt_id: str,
        message: str,
        status: int | None = None,
        retryable: bool = False,
        skippable: bool = False,
    ):
        super().__init__(f"teacher request for prompt {prompt_id!r} failed: {message}")
        self.prompt_id = prompt_id
        self.detail = message
        self.status = status
        self.retryable = retryable  # the retries ran out (5xx, 429, timeouts): a later run may succeed
        # The fault is this prompt's (a refusal, HTTP 400/413/422, a content filter) or the retries ran
        # out: a run may skip the prompt. False for faults of the endpoint or the setup (HTTP 401/403/404,
        # no API key), which every other prompt would hit too.
        self.skippable = skippable


# HTTP statuses that say "this request", not "this endpoint": bad request, payload too large, unprocessable.
PROMPT_FAULT_STATUSES = frozenset({400, 413, 422})


class TooManyFailedPrompts(RuntimeError):
    """More prompts than ``teacher.max_failed_prompts`` were skipped (all processes together): the run
    stops cleanly after the last complete step (checkpoint saved) instead of training on ever fewer
    teacher answers."""

    def __init__(self, failed: int, limit: int, processes: list[int] | None = None):
        where = f" (counted on process(es) {processes})" if processes else ""
        super().__init__(
            f"{failed} prompts the teacher did not answer were skipped, more than "
            f"teacher.max_failed_prompts={limit}{where}; each is logged with its row id. Raise the limit "
            "and resume (--config.resume=true) to go on: answers already received are in the cache"
        )
        self.failed, self.limit = failed, limit


class SpendingLimitReached(TeacherError):
    """``max_requests`` / ``max_total_tokens`` reached: no further request is sent. Not a failure of the
    prompt: the run should stop (responses already received are in the cache) rather than go on."""

    def __init__(self, prompt_id: str, spent: dict[str, int], limits: dict[str, int], cache: str | None):
        where = f"in the cache {cache}" if cache else "not cached (no cache configured)"
        total = f"for the cache {cache}, every run together" if cache else "by this process"
        super().__init__(
            prompt_id,
            f"spending limit reached: {spent['requests']} requests, {spent['tokens']} tokens spent {total} "
            f"(max_requests={limits['max_requests'] or 'unlimited'}, "
            f"max_total_tokens={limits['max_total_tokens'] or 'unlimited'}); every response received is "
            f"{where}; raise the limit and run again to continue (cached responses are not paid again)",
        )
        self.spent, self.limits = spent, limits


class SpendingLimitReachedElsewhere(SpendingLimitReached):
    """Multi-host: another process reached its spending limit, so this one stops at the same step too (a
    host that went on alone would wait forever in the step's collectives)."""

    def __init__(self, processes: list[int]):
        RuntimeError.__init__(
            self,
            f"teacher spending limit reached on process(es) {processes}; every process stops at the same "
            "step (the responses this process received are in its cache)",
        )
        self.prompt_id, self.status, self.retryable = "", None, False


class _Retry(Exception):
    """One failed attempt that may be retried."""

    def __init__(self, cause: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{cause}: {detail}")
        self.cause, self.detail, self.retry_after = cause, detail, retry_after


class TeacherFailedElsewhere(TeacherError):
    """Multi-host: the teacher failed on another process in a way no prompt can be skipped for (HTTP 401 /
    403 / 404, no API key); this process stops at the same step instead of waiting in a collective."""

    def __init__(self, processes: list[int]):
        RuntimeError.__init__(
            self,
            f"the teacher endpoint failed on process(es) {processes} (their log says why: a bad key, URL "
            "or model); every process stops at the same step",
        )
        self.prompt_id, self.detail, self.status, self.retryable, self.skippable = "", "", None, False, False
