"""The judge protocol end to end against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import json

import pytest

from gadjax.eval.judge import JUDGE_SYSTEM, JudgeSettings, judge_summary, rating_messages, run_judge
from gadjax.teacher.config import TeacherConfigError
from tests.eval.fake_judge import reference_for, split_rating_request, start_judge

QUESTIONS = [f"question {i}?" for i in range(8)]
STUDENT = [f"student answer {i}" for i in range(8)]
RATINGS = {
    "question 0?": "8 6\nAssistant 1 is more detailed.",
    "question 1?": "Assistant 1: 7 Assistant 2: 7",
    "question 2?": "I cannot decide.",  # parse_error
    "question 3?": "0 0",  # zero_scores
    "question 4?": "9/10 3/10\nThe second misses the point.",
    # question 5: the reference request is refused (400, not retried) -> reference_error
    # question 6: the rating request fails with 500 past the retries -> rating_error
    "question 7?": "**5** **10**",
}


def _chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def _settings(srv, tmp_path, **kw) -> JudgeSettings:
    return JudgeSettings(base_url=srv.base_url, model="judge-model", max_retries=1, concurrency=3,
                         timeout_s=10.0, cache_path=str(tmp_path / "judge.sqlite"), **kw)


def test_judge_protocol_scores_failures_and_reference_as_assistant_1(monkeypatch, tmp_path):
    srv = start_judge(monkeypatch, RATINGS)
    try:
        srv.script[QUESTIONS[5]] = ["400"]
        rating6 = rating_messages(QUESTIONS[6], reference_for(QUESTIONS[6]), STUDENT[6])[1]["content"]
        srv.script[rating6] = ["500", "500"]
        chats = [_chat(q) for q in QUESTIONS]
        results, counters = run_judge(chats, STUDENT, _settings(srv, tmp_path), progress=False)
        summary = judge_summary(results)

        expected = {0: 6 / 14, 1: 0.5, 4: 3 / 12, 7: 10 / 15}
        for k, r in enumerate(results):
            if k in expected:
                assert r.failure is None and r.score == pytest.approx(expected[k]), (k, r)
                assert r.reference == reference_for(QUESTIONS[k])
                assert r.raw == RATINGS[QUESTIONS[k]]
        assert [results[k].failure for k in (2, 3, 5, 6)] == [
            "parse_error", "zero_scores", "reference_error", "rating_error"]
        assert "400" in results[5].error and "500" in results[6].error
        assert results[3].s_reference == 0.0 and results[2].raw == "I cannot decide."
        assert summary["score"] == pytest.approx(100 * sum(expected.values()) / 4)
        assert (summary["n"], summary["n_ok"], summary["n_failed"]) == (8, 4, 4)
        assert summary["failures"] == {"reference_error": 1, "rating_error": 1, "parse_error": 1,
                                       "zero_scores": 1}
        assert counters["rating"]["retries"] == 1 and counters["reference"]["failures"] == 1

        # What the judge saw: its own reference as assistant 1, the student as assistant 2, the classic
        # system prompt, the configured model, and temperature 0; no rating for the failed reference.
        ratings_seen = [r["body"] for r in srv.requests if r["prompt"].startswith("[Question]")]
        refs_seen = [r["body"] for r in srv.requests if not r["prompt"].startswith("[Question]")]
        assert len(refs_seen) == 8
        assert {b["messages"][-1]["content"] for b in refs_seen} == set(QUESTIONS)
        assert len(ratings_seen) == 7 + 1  # question 6 tried twice
        for body in ratings_seen:
            assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM}
            assert body["model"] == "judge-model" and body["temperature"] == 0.0
            q, a1, a2 = split_rating_request(body["messages"][1]["content"])
            k = QUESTIONS.index(q)
            assert a1 == reference_for(q) and a2 == STUDENT[k]
            assert k != 5
        assert {b["max_tokens"] for b in refs_seen} == {1024}
        assert {b["max_tokens"] for b in ratings_seen} == {512}

        # A second evaluation of another student against the same cache pays for no reference again.
        srv.clear()
        other = [s + " (v2)" for s in STUDENT]
        results2, counters2 = run_judge(chats, other, _settings(srv, tmp_path), progress=False)
        seen = srv.prompts_seen()
        assert [p for p in seen if not p.startswith("[Question]")] == [QUESTIONS[5]]  # the failed one only
        assert counters2["reference"]["cache_hits"] == 7
        assert sum(p.startswith("[Question]") for p in seen) == 8  # new student answers: new ratings
        assert judge_summary(results2)["n"] == 8
    finally:
        srv.stop()


def test_judge_api_key_from_env_is_sent_and_never_saved(monkeypatch, tmp_path):
    secret = "sk-test-SECRET-1234567890"
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", secret)
    srv = start_judge(monkeypatch)
    try:
        settings = _settings(srv, tmp_path, api_key_env="JUDGE_KEY_FOR_TEST")
        results, _ = run_judge([_chat("q?")], ["a"], settings, progress=False)
        assert results[0].score == pytest.approx(6 / 14)
        assert {r["auth"] for r in srv.requests} == {f"Bearer {secret}"}
        dumped = json.dumps([settings.describe(), [r.as_dict() for r in results]])
        assert "JUDGE_KEY_FOR_TEST" in dumped and secret not in dumped
        for f in tmp_path.glob("judge.sqlite*"):  # the database and its WAL
            assert secret.encode() not in f.read_bytes()
    finally:
        srv.stop()


def test_missing_judge_key_is_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    settings = JudgeSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(TeacherConfigError, match="NO_SUCH_JUDGE_KEY"):
        run_judge([_chat("q?")], ["a"], settings, progress=False)
    with pytest.raises(ValueError, match="1 chats but 2 student responses"):
        run_judge([_chat("q?")], ["a", "b"], settings, progress=False)
