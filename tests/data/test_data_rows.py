"""Corpus reader (issue 4 acceptance 5 / issue 5 acceptance 6): each bad-row kind -> file:line error."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gadjax.data.rows import BadRowCounter, DataError, Row, normalize_row, read_jsonl, read_parquet

GOOD = {"content": [{"role": "user", "content": "hi"}], "teacher_response": "hello"}

# (raw line bytes, reason, words the message must contain)
BAD_LINES = [
    (b"{not json", "bad_json", ["bad JSON"]),
    (b'{"prompt": "caf\xe9"}', "invalid_utf8", ["invalid UTF-8"]),
    (b'{"content": [{"role": "user", "content": "q"}], "teacher_response": ""}', "empty_field",
     ["'teacher_response'", "empty"]),
    (b'{"content": [{"role": "user", "content": 5}], "teacher_response": "a"}', "bad_type",
     ["'content[0].content'", "string"]),
    (b'{"content": [{"role": "wizard", "content": "q"}], "teacher_response": "a"}', "bad_role",
     ["'content[0].role'", "wizard"]),
    (b'{"content": [{"content": "q"}], "teacher_response": "a"}', "missing_field", ["'content[0].role'"]),
    (b'{"content": [], "teacher_response": "a"}', "empty_field", ["'content'", "empty"]),
    (b'{"content": "just text", "teacher_response": "a"}', "bad_type", ["'content'", "list"]),
    (b'{"messages": [{"role": "user", "content": "q"}], "response": 7}', "bad_type", ["'response'"]),
    (b'{"prompt": ""}', "empty_field", ["'prompt'"]),
    (b'{"prompt": ["a"]}', "bad_type", ["'prompt'"]),
    (b'{"text": "no known field"}', "missing_field", ["'content'", "'messages'", "'prompt'"]),
    (b'[1, 2]', "bad_type", ["JSON object"]),
    (b'{"content": [{"role": "assistant", "content": "a"}], "teacher_response": "a"}', "no_user_turn",
     ["'content'", "user"]),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, '
     b'{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}]}', "non_text_part",
     ["'messages[0].content[1]'", "image_url", "only text parts"]),
    (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null, '
     b'"tool_calls": [{"id": "c1", "type": "function"}]}, {"role": "tool", "content": "42"}, '
     b'{"role": "user", "content": "so?"}]}', "tool_turn", ["'messages[1]'", "tool"]),
    (b'{"messages": [{"role": "tool", "content": "42"}, {"role": "user", "content": "so?"}]}', "tool_turn",
     ["'messages[0]'", "'tool'", "not supported"]),
]


@pytest.mark.parametrize("line,reason,words", BAD_LINES, ids=[b[1] + str(i) for i, b in enumerate(BAD_LINES)])
def test_each_bad_row_kind_names_file_and_line(tmp_path, line, reason, words):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + line + b"\n" + json.dumps(GOOD).encode() + b"\n")
    with pytest.raises(DataError) as e:
        list(read_jsonl(path))
    assert str(e.value).startswith(f"{path}:3: "), str(e.value)  # line 2 is blank, still counted
    assert e.value.reason == reason
    for w in words:
        assert w in str(e.value)


def test_skip_mode_counts_every_kind(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps(GOOD).encode()] + [b[0] for b in BAD_LINES] + [json.dumps(GOOD).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    counter = BadRowCounter()
    rows = list(read_jsonl(path, skip_bad_rows=True, counter=counter))
    assert [n for n, _ in rows] == [1, len(lines)]
    assert counter.total == len(BAD_LINES)
    expected: dict[str, int] = {}
    for _, reason, _ in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(counter.by_reason) == expected
    assert counter.report()["examples"][0].startswith(f"{path}:2: ")


def test_parquet_row_index_is_the_line(tmp_path):
    path = tmp_path / "corpus.parquet"
    table = pa.table({
        "content": [[{"role": "user", "content": "q0"}], [{"role": "user", "content": "q1"}],
                    [{"role": "user", "content": "  "}]],
        "teacher_response": ["a0", None, "a2"],
    })
    pq.write_table(table, path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: field 'teacher_response' is missing"):
        list(read_parquet(path, require_response=True))
    counter = BadRowCounter()
    rows = list(read_parquet(path, skip_bad_rows=True, counter=counter))
    assert rows == [(0, Row([{"role": "user", "content": "q0"}], "a0")),
                    (1, Row([{"role": "user", "content": "q1"}], None))]
    assert dict(counter.by_reason) == {"empty_field": 1}
    assert counter.examples[0].startswith(f"{path}:2: field 'content[0].content'")


def test_formats_and_trailing_assistant_turn():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "original model answer"}]
    row = normalize_row({"content": chat, "teacher_response": "teacher"}, "f:1")
    # The original (non-teacher) answer at the end is dropped; earlier turns stay as context.
    assert row == Row(chat[:4], "teacher")
    assert normalize_row({"messages": chat[:2], "response": "r"}, "f:1") == Row(chat[:2], "r")
    user_p = [{"role": "user", "content": "p"}]
    assert normalize_row({"prompt": "p", "response": "r"}, "f:1") == Row(user_p, "r")
    assert normalize_row({"prompt": "p"}, "f:1").response is None
    with pytest.raises(DataError, match="teacher_response"):
        normalize_row({"content": chat[:2]}, "f:1", require_response=True)


def test_openai_content_parts_and_developer_role():
    """OpenAI chat rows: text content parts are joined with a newline, ``developer`` is read as system;
    what is distilled is the answer to the final user turn, earlier turns stay as context."""
    two_parts = [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two."}]
    raw = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
            {"role": "user", "content": two_parts},
            {"role": "assistant", "content": "the original model's answer: dropped"},
        ]
    }
    row = normalize_row(raw, "f.jsonl:1")
    assert row.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "Part one.\nTwo."},
    ]
    with pytest.raises(DataError, match=r"f.jsonl:1: field 'messages\[0\].content' is an empty list"):
        normalize_row({"messages": [{"role": "user", "content": []}]}, "f.jsonl:1")
