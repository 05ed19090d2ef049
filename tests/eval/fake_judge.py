"""A judge on loopback: the teacher tests' real OpenAI-compatible HTTP server (tests/teacher/fake_server.py)
with its answer function swapped for one that plays the judge protocol.

Reference requests (the chat itself) are answered ``"Judge reference for: <question>"``; rating requests
(the FastChat template) get ``ratings[question]`` (default ``"8 6"``). The server records every request
body and can fail chosen requests through its ``script``.
"""

from __future__ import annotations

import re

from tests.teacher import fake_server

_QUESTION = re.compile(r"^\[Question\]\n(.*?)\n\n\[The Start of Assistant 1's Answer\]", re.DOTALL)
_ANSWER = r"\[The Start of Assistant {k}'s Answer\]\n(.*?)\n\n\[The End of Assistant {k}'s Answer\]"


def reference_for(question: str) -> str:
    return f"Judge reference for: {question}"


def split_rating_request(user_content: str) -> tuple[str, str, str]:
    """(question, assistant 1's answer, assistant 2's answer) of a rating request."""
    q = _QUESTION.match(user_content)
    a1 = re.search(_ANSWER.format(k=1), user_content, re.DOTALL)
    a2 = re.search(_ANSWER.format(k=2), user_content, re.DOTALL)
    assert q and a1 and a2, user_content
    return q.group(1), a1.group(1), a2.group(1)


def judge_answerer(ratings: dict[str, str], default: str = "8 6\nAssistant 1 is more complete."):
    def answer(prompt: str) -> str:
        if prompt.startswith("[Question]\n"):
            question, _, _ = split_rating_request(prompt)
            return ratings.get(question, default)
        return reference_for(prompt)

    return answer


def start_judge(monkeypatch, ratings: dict[str, str] | None = None, **kw) -> fake_server.FakeOpenAI:
    """A started FakeOpenAI whose answers follow the judge protocol (stop it when done)."""
    monkeypatch.setattr(fake_server, "answer_for", judge_answerer(ratings or {}))
    return fake_server.FakeOpenAI(**kw).start()
