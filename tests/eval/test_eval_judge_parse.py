"""Judge-output parsing on a table of real-looking judge outputs, failures included."""

from __future__ import annotations

import pytest

from gadjax.eval.judge import (
    JUDGE_INSTRUCTION,
    JudgeResult,
    judge_summary,
    parse_scores,
    rating_messages,
    render_question,
    score_item,
)

PARSED = [
    ("8 7", (8, 7)),
    ("8 7\nAssistant 1 gave a thorough answer while Assistant 2 missed the second part.", (8, 7)),
    ("8, 7", (8, 7)),
    ("8,7", (8, 7)),
    ("8/10 7/10", (8, 7)),
    ("8 out of 10, 6 out of 10", (8, 6)),
    ("Assistant 1: 8 Assistant 2: 7", (8, 7)),
    ("Assistant 1: 8, Assistant 2: 7\n\nExplanation: ...", (8, 7)),
    ("Assistant 1: 9/10, Assistant 2: 4/10", (9, 4)),
    ("**9** **6**", (9, 6)),
    ("**Scores:** 9 6", (9, 6)),
    ("## 7 9", (7, 9)),
    ("8.5 7", (8.5, 7)),
    ("10 10", (10, 10)),
    ("(9, 3)", (9, 3)),
    ("  \n\n6 8\nThe second is better.", (6, 8)),  # leading blank lines
    ("9 5 Assistant 1 is more detailed.", (9, 5)),  # explanation on the same line
    ("Sure, here is my evaluation.\n9 4\nAssistant 1 ...", (9, 4)),  # pair on its own line later
    ("My evaluation:\nAssistant 1: 9\nAssistant 2: 4\nAssistant 1 is better because ...", (9, 4)),
    ("The score of Assistant 1: 8\nThe score of Assistant 2: 5", (8, 5)),
    ("Assistant 1 receives a score of 8, while Assistant 2 receives a score of 6.", (8, 6)),
    ("Score for Assistant 1 = 7, score for Assistant 2 = 9", (7, 9)),
    ("Assistant 1's score: 6\nAssistant 2's score: 2", (6, 2)),
    ("0 7", (0, 7)),  # an empty answer may get 0
    ("0 0", (0, 0)),  # parsed; score_item turns it into a failure
]

UNPARSEABLE = [
    "",
    "   \n ",
    "I think both answers are good.",
    "85 70",  # out of range
    "11 3",
    "1. Helpfulness: both are fine\n2. Relevance: both are on topic",
    "Assistant 1's answer lists 3 reasons.\nAssistant 2 has 2 points.",  # counts, not scores
    "Assistant 1: 8",  # only one score
    "8",
    "As an AI language model, I cannot rate these responses.",
    "The scores are 8 and 7 respectively, on a scale 1 to 10",  # prose with four numbers: too risky
]


@pytest.mark.parametrize("text,expected", PARSED)
def test_parse_scores_accepts(text, expected):
    assert parse_scores(text) == tuple(float(x) for x in expected)


@pytest.mark.parametrize("text", UNPARSEABLE)
def test_parse_scores_rejects(text):
    assert parse_scores(text) is None


def test_parse_scores_none():
    assert parse_scores(None) is None


def test_score_item_math_and_failures():
    r = score_item((8.0, 6.0), "8 6", "ref")
    assert r.failure is None and r.score == pytest.approx(6 / 14)
    assert score_item((0.0, 7.0), "0 7", "ref").score == 1.0
    z = score_item((0.0, 0.0), "0 0", "ref")
    assert z.failure == "zero_scores" and z.score is None
    p = score_item(None, "hmm", "ref")
    assert p.failure == "parse_error" and p.raw == "hmm" and p.reference == "ref"


def test_summary_counts_failures_and_averages_successes_only():
    results = [score_item((8.0, 6.0), "", "r"), score_item((5.0, 5.0), "", "r"),
               score_item(None, "", "r"), JudgeResult(failure="reference_error"),
               JudgeResult(failure="rating_error"), score_item((0.0, 0.0), "", "r")]
    s = judge_summary(results)
    assert s["score"] == pytest.approx(100 * (6 / 14 + 0.5) / 2)
    assert (s["n"], s["n_ok"], s["n_failed"]) == (6, 2, 4)
    assert s["failures"] == {"reference_error": 1, "rating_error": 1, "parse_error": 1, "zero_scores": 1}
    assert s["mean_s_student"] == pytest.approx(5.5) and s["mean_s_reference"] == pytest.approx(6.5)
    empty = judge_summary([JudgeResult(failure="parse_error")])
    assert empty["score"] is None and empty["n_ok"] == 0


def test_rating_prompt_puts_reference_first_and_uses_the_classic_wording():
    msgs = rating_messages("What is 2+2?", "REFERENCE", "STUDENT")
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    user = msgs[1]["content"]
    assert user.index("[The Start of Assistant 1's Answer]\nREFERENCE\n") < user.index(
        "[The Start of Assistant 2's Answer]\nSTUDENT\n")
    assert "Please rate the helpfulness, relevance, accuracy, level of details of their responses." in user
    assert "first output a single line containing only two values" in JUDGE_INSTRUCTION
    assert render_question([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]) == "q"
    multi = render_question([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "user", "content": "c"}])
    assert multi == "User: a\n\nAssistant: b\n\nUser: c"
