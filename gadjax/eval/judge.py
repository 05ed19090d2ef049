"""The judge protocol of SPEC.md ("GPT-4o score"), against any OpenAI-compatible chat endpoint.

For each prompt:
1. the judge writes its OWN reference answer to the prompt (the chat as the student saw it);
2. the judge rates the reference (assistant 1) and the student's response (assistant 2), 1-10 each,
   for helpfulness, relevance, accuracy and level of detail, the two scores on the FIRST output line.
   The rating request uses the classic Vicuna / LMSYS (FastChat) pairwise-rating prompt;
3. item score = s_student / (s_student + s_reference); the reported score is the mean over the items
   that succeeded, x 100 (50 = parity with the judge's own answer).

Requests go through :class:`gadjax.teacher.client.TeacherClient`, so they are retried with backoff and
cached (the reference answers do not depend on the student: evaluating several checkpoints against
one cache pays for them once). Failures are never dropped silently: an item whose reference or rating
request failed after the retries, whose rating cannot be parsed, or whose two scores are both 0 is
counted under its reason, and the mean is over the successful items with both counts reported.

Parsing (:func:`parse_scores`) accepts the common shapes of a first line -- ``8 7``, ``8, 7``,
``8/10 7/10``, ``Assistant 1: 8 Assistant 2: 7``, ``**8** **7**``, ``8.5 7`` -- and scores in [0, 10]
(a judge may give an empty answer 0; (0, 0) is a failure because the ratio is undefined). If the first
line does not hold exactly one pair, the whole text is searched conservatively: only labelled scores
(``Assistant 1's score: 8`` ... ``Assistant 2: 7``) or a line that is nothing but two numbers count.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from gadjax.teacher.client import TeacherClient, TeacherError
from gadjax.teacher.config import TeacherConfig

Messages = Sequence[Mapping[str, str]]

# The classic pairwise-rating prompt of the Vicuna evaluation (lm-sys/FastChat, eval/table/prompt.jsonl,
# "general" category), as used for the "GPT-4 score" in the distillation literature.
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{instruction}\n\n"
)
JUDGE_INSTRUCTION = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
    "a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
    "order in which the responses were presented does not affect your judgment."
)

FAILURE_REASONS = ("reference_error", "rating_error", "parse_error", "zero_scores")

# ---------------------------------------------------------------------------------------------- parsing
_N = r"(\d+(?:\.\d+)?)"
_NUM = re.compile(r"\d+(?:\.\d+)?")
_DENOM = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*10(?:\.0+)?(?![\d.])", re.IGNORECASE)
# "Assistant 1: 8", "Assistant 1's score is 8", "assistant 2 receives a score of 7", "Assistant #1 = 8".
_LABELLED = re.compile(
    r"assistant\s*#?\s*([12])(?![\d.])(?:\s*'s)?"
    r"(?:\s*(?:overall\s+)?(?:score|rating))?"
    r"\s*(?:[:=\-\u2013]|is|of|receives(?:\s+a\s+score\s+of)?|gets|got|scored?|rated(?:\s+at)?)?"
    r"\s*[:=]?\s*" + _N,
    re.IGNORECASE,
)
# "The score of Assistant 1: 8" / "Score for Assistant 2 = 7".
_LABEL_AFTER = re.compile(
    r"(?:score|rating)\s+(?:of|for)\s+assistant\s*#?\s*([12])(?![\d.])\s*[:=]?\s*" + _N, re.IGNORECASE
)
_PAIR = r"^\s*(?:scores?\s*[:=]?\s*)?[(\[]?\s*" + _N + r"\s*[,;/\s]\s*" + _N
_LEADING_PAIR = re.compile(_PAIR + r"(?![\d.])", re.IGNORECASE)
_ONLY_PAIR = re.compile(_PAIR + r"\s*[)\]]?\s*\.?\s*$", re.IGNORECASE)


def _clean(text: str) -> str:
    """Drop markdown emphasis / headers and '/10' or 'out of 10' denominators."""
    text = re.sub(r"[*_#`]", "", text)
    return _DENOM.sub(r"\1", text)


def _valid(a: float, b: float) -> tuple[float, float] | None:
    return (a, b) if 0.0 <= a <= 10.0 and 0.0 <= b <= 10.0 else None


def _labelled(text: str) -> tuple[float, float] | None:
    found: dict[str, float] = {}
    matches = [
        (m.start(), m.group(1), m.group(2)) for rx in (_LABELLED, _LABEL_AFTER) for m in rx.finditer(text)
    ]
    for _, label, value in sorted(matches):
        found.setdefault(label, float(value))  # the first score given for each assistant
    if "1" in found and "2" in found:
        return _valid(found["1"], found["2"])
    return None


def parse_scores(text: str | None) -> tuple[float, float] | None:
    """(score of assistant 1, score of assistant 2) from a judge's output, or None if unparseable.

    First line (the first non-empty one): labelled scores, else a leading pair of numbers, else the
    line's numbers if there are exactly two. Otherwise the whole text, conservatively: labelled scores,
    else the first line that is nothing but two numbers. Scores must lie in [0, 10].
    """
    if not text or not text.strip():
        return None
    lines = [_clean(line) for line in text.strip().splitlines()]
    lines = [line for line in lines if line.strip()]
    if not lines:
        return None
    first = lines[0]
    got = _labelled(first)
    if got is not None:
        return got
    m = _LEADING_PAIR.match(first)
    if m:
        got = _valid(float(m.group(1)), float(m.group(2)))
        if got is not None:
            return got
    nums = _NUM.findall(first)
    if len(nums) == 2 and not re.search(r"assistant\s*#?\s*[12]", first, re.IGNORECASE):
        got = _valid(float(nums[0]), float(nums[1]))
        if got is not None:
            return got
    got = _labelled("\n".join(lines))
    if got is not None:
        return got
    for line in lines:
        m = _ONLY_PAIR.match(line)
        if m:
            got = _valid(float(m.group(1)), float(m.group(2)))
            if got is not None:
                return got
    return None


# ---------------------------------------------------------------------------------------------- protocol
@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """Where the judge lives and how it is asked. ``api_key_env`` is the NAME of the variable holding
    the key (None: no authentication); the key itself is never stored, logged or written out."""

    base_url: str
    model: str
    api_key_env: str | None = None
    temperature: float = 0.0
    reference_max_tokens: int = 1024
    rating_max_tokens: int = 512
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 4
    cache_path: str | None = None

    def client_config(self, max_tokens: int) -> TeacherConfig:
        """The chat client's settings: every field the two share, and this call's ``max_tokens``."""
        client_fields = {f.name for f in dataclasses.fields(TeacherConfig)}
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in client_fields}
        # Each evaluation asks again for an item the judge refused before (counted as failed each time,
        # never dropped silently) rather than replaying the refusal recorded in the cache.
        return TeacherConfig(**shared, max_tokens=max_tokens, retry_failed=True)

    def describe(self) -> dict[str, Any]:
        """The settings as saved in eval JSON (the key's variable name, never its value)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class JudgeResult:
    """One judged item. ``score`` = s_student / (s_student + s_reference) in [0, 1] when it succeeded;
    otherwise ``failure`` is one of FAILURE_REASONS and ``error`` says what happened."""

    reference: str | None = None
    raw: str | None = None
    s_reference: float | None = None
    s_student: float | None = None
    score: float | None = None
    failure: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def render_question(messages: Messages) -> str:
    """The [Question] text: the user turn for a single-turn chat, else the conversation with role tags."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def rating_messages(question: str, reference: str, student: str) -> list[dict[str, str]]:
    """The rating request: the judge's reference is assistant 1, the student is assistant 2."""
    user = JUDGE_TEMPLATE.format(
        question=question, answer_1=reference, answer_2=student, instruction=JUDGE_INSTRUCTION
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def score_item(scores: tuple[float, float] | None, raw: str, reference: str) -> JudgeResult:
    """Turn parsed (s_reference, s_student) into a JudgeResult (parse / zero failures included)."""
    if scores is None:
        return JudgeResult(reference, raw, failure="parse_error", error="no pair of scores in [0, 10] found")
    s_ref, s_stu = scores
    if s_ref + s_stu == 0:
        return JudgeResult(
            reference,
            raw,
            s_ref,
            s_stu,
            failure="zero_scores",
            error="both scores are 0: the ratio is undefined",
        )
    return JudgeResult(reference, raw, s_ref, s_stu, score=s_stu / (s_stu + s_ref))


def run_judge(
    chats: Sequence[Messages],
    student_responses: Sequence[str],
    settings: JudgeSettings,
    *,
    ids: Sequence[str] | None = None,
    progress: bool = True,
    references: Sequence[str | None] | None = None,
) -> tuple[list[JudgeResult], dict]:
    """Judge every (chat, student response); returns per-item results (input order) and the client
    counters (requests, retries, cache hits, failures) of both phases.

    ``references``: the judge's own answers from an earlier run_judge over the same chats (None where
    that request failed): phase 1 is skipped, so a second set of responses (the teacher corpus as a
    baseline) is rated against exactly the references the first was (a paired comparison)."""
    if len(chats) != len(student_responses):
        raise ValueError(f"run_judge: {len(chats)} chats but {len(student_responses)} student responses")
    if references is not None and len(references) != len(chats):
        raise ValueError(f"run_judge: {len(chats)} chats but {len(references)} references")
    ids = [str(i) for i in (ids if ids is not None else range(len(chats)))]
    ref_cfg = settings.client_config(settings.reference_max_tokens)
    ref_cfg.api_key()  # a missing key is a configuration error, not N counted item failures
    rate_cfg = settings.client_config(settings.rating_max_tokens)
    results = [JudgeResult() for _ in chats]
    window = max(2 * settings.concurrency, 1)
    counters: dict[str, Any] = {}

    if references is not None:
        for k, ref in enumerate(references):
            if ref is None:
                results[k] = JudgeResult(failure="reference_error", error="no reference answer (it failed)")
            else:
                results[k].reference = ref
        return _rate(chats, student_responses, settings, ids, results, counters, rate_cfg, window, progress)

    with TeacherClient(ref_cfg) as client:  # 1. the judge's own answers
        items = ((f"{i}:reference", list(c)) for i, c in zip(ids, chats, strict=True))
        bar = tqdm(total=len(chats), desc="judge: reference answers", disable=not progress, leave=False)
        for k, (_, _, res) in enumerate(client.iter_results(items, window)):
            if isinstance(res, TeacherError):
                results[k] = JudgeResult(failure="reference_error", error=str(res))
            else:
                results[k].reference = res[0].text
            bar.update(1)
        bar.close()
        counters["reference"] = client.counters
    return _rate(chats, student_responses, settings, ids, results, counters, rate_cfg, window, progress)


def _rate(
    chats: Sequence[Messages],
    student_responses: Sequence[str],
    settings: JudgeSettings,
    ids: list[str],
    results: list[JudgeResult],
    counters: dict[str, Any],
    rate_cfg: TeacherConfig,
    window: int,
    progress: bool,
) -> tuple[list[JudgeResult], dict]:
    """Phase 2 of run_judge: rate each item that has a reference answer."""
    todo = [k for k, r in enumerate(results) if r.failure is None]
    with TeacherClient(rate_cfg) as client:  # 2. ratings: reference = assistant 1, student = assistant 2
        items = (
            (
                f"{ids[k]}:rating",
                rating_messages(render_question(chats[k]), results[k].reference, student_responses[k]),
            )
            for k in todo
        )
        bar = tqdm(total=len(todo), desc="judge: ratings", disable=not progress, leave=False)
        for k, (_, _, res) in zip(todo, client.iter_results(items, window), strict=True):
            ref = results[k].reference
            if isinstance(res, TeacherError):
                results[k] = JudgeResult(ref, failure="rating_error", error=str(res))
            else:
                raw = res[0].text
                results[k] = score_item(parse_scores(raw), raw, ref)
            bar.update(1)
        bar.close()
        counters["rating"] = client.counters
    return results, counters


def judge_summary(results: Sequence[JudgeResult]) -> dict[str, Any]:
    """Mean score x 100 over the successful items, with the success / failure counts by reason."""
    ok = [r for r in results if r.failure is None]
    failures = collections.Counter(r.failure for r in results if r.failure is not None)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    score = mean([r.score for r in ok])
    return {
        "score": None if score is None else 100.0 * score,
        "n": len(results),
        "n_ok": len(ok),
        "n_failed": len(results) - len(ok),
        "failures": {reason: failures.get(reason, 0) for reason in FAILURE_REASONS},
        "mean_s_student": mean([r.s_student for r in ok]),
        "mean_s_reference": mean([r.s_reference for r in ok]),
    }
