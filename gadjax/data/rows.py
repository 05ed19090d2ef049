"""One training row: a chat prompt plus an optional teacher response, and the readers that make rows.

Accepted raw row formats (one JSON object per JSONL line, or one parquet row):

- Released GAD format (LMSYS-Chat-GPT-5-Chat-Response, SPEC.md "Data and evaluation"):
  ``{"content": [{"role", "content"}, ...], "teacher_response": str}``.
- Plain chat: ``{"messages": [{"role", "content"}, ...], "response": str}``.
- Plain prompt: ``{"prompt": str, "response": str}`` or ``{"prompt": str}`` (the prompt becomes one
  user turn).

The response key (``teacher_response`` / ``response``) may be ABSENT (or null): the row is then a
prompt only, for online teacher mode. A response that is present must be a non-empty string.

Messages follow OpenAI's chat format (gadjax.data.chat): ``content`` is a string or a list of text parts
(joined with a newline; an image or other non-text part is a bad row naming it), ``developer`` is read as
``system``, and tool turns (role ``tool`` / ``function``, assistant ``tool_calls``) are bad rows.

Multi-turn rows: only the FINAL user turn is answered and distilled. Everything before it (system
message, earlier user turns, earlier assistant turns) is context: it is rendered into the prompt with the
student's chat template, the teacher sees it, and no loss is taken on it.

Trailing assistant turns. A chat source may carry the original conversation's assistant answer as the
last message (LMSYS conversations do). That answer is not the teacher's, and the prompt the student
sees must end where the student is asked to speak (the chat template is rendered with
``add_generation_prompt=True``). So trailing ``assistant`` messages are removed from the prompt and
discarded; earlier assistant turns of a multi-turn chat stay as context. What remains must end with a
``user`` turn. The dropped turn is never used as a response: mixing the original model's answers into
the teacher set would silently change what is being distilled.

Errors. Every bad row raises :class:`DataError` whose message starts with ``"<where>: "`` (``where`` is
``file:line`` for JSONL, ``file:row`` for parquet, 1-based lines, 0-based parquet row indices) and
names the offending field. With ``skip_bad_rows=True`` the readers count the row under a short reason
key in :class:`BadRowCounter` instead of raising.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gadjax.data.chat import TOOL_FIELDS, TOOL_ROLES, ContentError, content_text, message_role

ROLES = ("system", "user", "assistant")  # after normalisation (gadjax.data.chat: developer -> system)


class DataError(ValueError):
    """A bad row or file; the message starts with ``<file>:<line>:`` and names the field."""

    def __init__(self, where: str, what: str, reason: str = "bad_row"):
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what
        self.reason = reason  # short key used to count skips by kind


@dataclasses.dataclass(frozen=True)
class Row:
    """A normalized row. ``messages`` ends with a user turn; ``response`` is None for prompt-only rows."""

    messages: list[dict[str, str]]
    response: str | None
    # Why the teacher stopped, when the corpus records it (gadjax.teacher.collect writes the API's
    # finish_reason). "length" = cut by the teacher's max_tokens: the text did not end, so it gets no EOS.
    finish_reason: str | None = None


def _fail(where: str, reason: str, what: str) -> DataError:
    return DataError(where, what, reason)


def _messages(value: Any, field: str, where: str) -> list[dict[str, str]]:
    if value is None:
        raise _fail(where, "missing_field", f"field '{field}' is missing or null")
    # pyarrow gives numpy arrays / lists for list columns; accept any non-string sequence.
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__len__"):
        raise _fail(
            where,
            "bad_type",
            f"field '{field}' must be a list of {{role, content}} messages, got {type(value).__name__}",
        )
    if len(value) == 0:
        raise _fail(where, "empty_field", f"field '{field}' is an empty list")
    out = []
    for i, m in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(m, Mapping):
            raise _fail(
                where,
                "bad_type",
                f"field '{f}' must be an object with role and content, got {type(m).__name__}",
            )
        if m.get("role") is None:
            raise _fail(where, "missing_field", f"field '{f}.role' is missing")
        if m.get("content") is None:
            if m.get("role") in TOOL_ROLES or any(m.get(k) for k in TOOL_FIELDS):
                pass  # a tool turn: message_role below names it
            else:
                raise _fail(where, "missing_field", f"field '{f}.content' is missing or null")
        try:
            role = message_role(m, f)
            content = content_text(m["content"], f + ".content")
        except ContentError as e:
            raise _fail(where, e.reason, str(e)) from None
        if not content.strip():
            raise _fail(where, "empty_field", f"field '{f}.content' is empty")
        out.append({"role": role, "content": content})
    while out and out[-1]["role"] == "assistant":
        out.pop()  # the original answer, not the teacher's: see module docstring
    if not out or out[-1]["role"] != "user":
        raise _fail(
            where,
            "no_user_turn",
            f"field '{field}' has no user turn to answer "
            "(after dropping trailing assistant turns it must end with role 'user')",
        )
    return out


def _response(raw: Mapping[str, Any], field: str, where: str, require: bool) -> str | None:
    value = raw.get(field)
    if value is None:
        if require:
            raise _fail(where, "missing_field", f"field '{field}' is missing or null")
        return None
    if not isinstance(value, str):
        raise _fail(where, "bad_type", f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _fail(where, "empty_field", f"field '{field}' is empty")
    return value


def normalize_row(raw: Any, where: str, require_response: bool = False) -> Row:
    """Turn one raw row (any accepted format, see module docstring) into a :class:`Row`.

    Args:
      raw: the decoded JSON object / parquet row as a dict.
      where: ``"<file>:<line>"`` used as the error prefix.
      require_response: treat an absent response as an error (offline corpora).
    Raises:
      DataError: naming ``where`` and the offending field.
    """
    if not isinstance(raw, Mapping):
        raise _fail(where, "bad_type", f"row must be a JSON object, got {type(raw).__name__}")
    if "content" in raw:  # released GAD format
        messages = _messages(raw["content"], "content", where)
        response = _response(raw, "teacher_response", where, require_response)
    elif "messages" in raw:
        messages = _messages(raw["messages"], "messages", where)
        response = _response(raw, "response", where, require_response)
    elif "prompt" in raw:
        prompt = raw["prompt"]
        if prompt is None:
            raise _fail(where, "missing_field", "field 'prompt' is null")
        if not isinstance(prompt, str):
            raise _fail(where, "bad_type", f"field 'prompt' must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise _fail(where, "empty_field", "field 'prompt' is empty")
        messages = [{"role": "user", "content": prompt}]
        response = _response(raw, "response", where, require_response)
    else:
        raise _fail(
            where,
            "missing_field",
            "row has none of the fields 'content' (GAD format), "
            f"'messages' or 'prompt'; keys: {sorted(raw)[:8]}",
        )
    finish = raw.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise _fail(where, "bad_type", f"field 'finish_reason' must be a string, got {type(finish).__name__}")
    return Row(messages=messages, response=response, finish_reason=finish)


def decode_jsonl_line(line: bytes, where: str) -> Any:
    """Decode one JSONL line from bytes; invalid UTF-8 and bad JSON become :class:`DataError`."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(where, "invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(where, "bad_json", f"bad JSON: {e.msg} at column {e.colno}") from None


class BadRowCounter:
    """Counts skipped rows by reason, and keeps the first few messages for the report."""

    def __init__(self, keep: int = 5):
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        self._keep = keep

    def add(self, err: DataError) -> None:
        self.by_reason[err.reason] += 1
        if len(self.examples) < self._keep:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def report(self) -> dict[str, Any]:
        return {"skipped": self.total, "by_reason": dict(self.by_reason), "examples": list(self.examples)}

    def checked(self, skip_bad_rows: bool, parse: Callable[..., Any], *args: Any) -> Any | None:
        """``parse(*args)``, the one validate-or-count rule of every reader: a bad row raises its
        :class:`DataError`, or with ``skip_bad_rows`` is counted here and gives None."""
        try:
            return parse(*args)
        except DataError as e:
            if not skip_bad_rows:
                raise
            self.add(e)
            return None


def parse_jsonl_line(line: bytes, where: str, require_response: bool = False) -> Row:
    """One JSONL line decoded and validated."""
    return normalize_row(decode_jsonl_line(line, where), where, require_response)


def read_jsonl(
    path: str | os.PathLike,
    skip_bad_rows: bool = False,
    require_response: bool = False,
    counter: BadRowCounter | None = None,
) -> Iterator[tuple[int, Row]]:
    """Yield ``(line_number, Row)`` (1-based) for every non-blank line of a JSONL file.

    Lines are read as bytes and decoded one by one, so an invalid UTF-8 sequence is reported on its
    own line. Bad rows raise :class:`DataError` unless ``skip_bad_rows``; then they go to ``counter``.
    """
    counter = BadRowCounter() if counter is None else counter
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{lineno}"
            row = counter.checked(skip_bad_rows, parse_jsonl_line, line, where, require_response)
            if row is not None:
                yield lineno, row


def read_parquet(
    path: str | os.PathLike,
    skip_bad_rows: bool = False,
    require_response: bool = False,
    counter: BadRowCounter | None = None,
) -> Iterator[tuple[int, Row]]:
    """Yield ``(row_index, Row)`` (0-based) for every row of a parquet file (read with pyarrow)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise DataError(os.fspath(path), f"not a readable parquet file: {e}", "bad_file") from None
    counter = BadRowCounter() if counter is None else counter
    index = 0
    for batch in pf.iter_batches(batch_size=1024):
        for raw in batch.to_pylist():
            row = counter.checked(
                skip_bad_rows, normalize_row, raw, f"{os.fspath(path)}:{index}", require_response
            )
            if row is not None:
                yield index, row
            index += 1


def read_rows(
    path: str | os.PathLike,
    skip_bad_rows: bool = False,
    require_response: bool = False,
    counter: BadRowCounter | None = None,
) -> Iterator[tuple[int, Row]]:
    """Dispatch on the file suffix: ``.parquet`` -> :func:`read_parquet`, otherwise JSONL."""
    reader = read_parquet if os.fspath(path).endswith(".parquet") else read_jsonl
    return reader(path, skip_bad_rows=skip_bad_rows, require_response=require_response, counter=counter)
