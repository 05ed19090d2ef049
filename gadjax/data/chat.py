"""Chat messages as gadjax reads them (OpenAI formats), and the ONE rule for a hidden system prompt.

Message content: a string, or an OpenAI content-part list of text parts (``[{"type": "text", "text":
...}, ...]``), joined with a newline (as vLLM does). Any other part (image_url, input_audio, file, ...)
is refused with :class:`ContentError` naming the part: gadjax distils text only. Roles: ``system``,
``user``, ``assistant``, and ``developer`` (OpenAI's newer name for system) read as ``system``. Tool turns
(role ``tool`` / ``function``, or an assistant turn carrying ``tool_calls`` / ``function_call``) are
refused: a student chat template cannot render them uniformly, and a prompt that ends in a tool result
is not a question the teacher answers in text.

The hidden system prompt (a teacher "persona": ``teacher.system_prompt``, ``collect --system-prompt``,
``serve --system-prompt``, ``evaluate --teacher-system-prompt``) is applied by
:func:`with_hidden_system_prompt` everywhere: it comes first, and when the conversation has its own
leading system message, ONE system message carries both (hidden text, a blank line, the conversation's),
since many chat templates accept a single system message only. The student never sees the hidden text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TOOL_ROLES = ("tool", "function")
TOOL_FIELDS = ("tool_calls", "function_call")


class ContentError(ValueError):
    """A message the readers refuse; ``field`` is the offending field relative to the message list
    (e.g. ``[2].content[1]``), ``reason`` a short key for counting skipped rows."""

    def __init__(self, field: str, what: str, reason: str):
        super().__init__(f"field '{field}' {what}")
        self.field, self.what, self.reason = field, what, reason


def content_text(content: Any, field: str) -> str:
    """The text of one message's ``content``: a string as is, a list of text parts joined with "\\n"."""
    if isinstance(content, str):
        return content
    if isinstance(content, str | bytes | Mapping) or not hasattr(content, "__len__"):
        raise ContentError(
            field, f"must be a string or a list of text parts, got {type(content).__name__}", "bad_type"
        )
    texts = []
    for j, part in enumerate(content):  # pyarrow hands list columns over as numpy arrays: any sequence
        f = f"{field}[{j}]"
        if not isinstance(part, Mapping):
            raise ContentError(f, f"must be a content part object, got {type(part).__name__}", "bad_type")
        kind = part.get("type")
        if kind != "text":
            raise ContentError(
                f, f"is a {kind!r} part; only text parts are supported (gadjax distils text)", "non_text_part"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise ContentError(f + ".text", f"must be a string, got {type(text).__name__}", "bad_type")
        texts.append(text)
    if not texts:
        raise ContentError(field, "is an empty list of content parts", "empty_field")
    return "\n".join(texts)


def message_role(message: Mapping[str, Any], field: str) -> str:
    """The normalised role of one message (developer -> system); tool turns are refused."""
    role = message.get("role")
    if isinstance(role, str) and (role in TOOL_ROLES or (role == "assistant" and _has_tool_call(message))):
        raise ContentError(
            field,
            f"is a tool turn (role {role!r}{', with tool calls' if role == 'assistant' else ''}); "
            "tool and function-call conversations are not supported: keep text turns only",
            "tool_turn",
        )
    if not isinstance(role, str) or role not in ROLE_ALIASES:
        raise ContentError(field + ".role", f"is {role!r}, expected one of {tuple(ROLE_ALIASES)}", "bad_role")
    return ROLE_ALIASES[role]


def _has_tool_call(message: Mapping[str, Any]) -> bool:
    return any(message.get(k) for k in TOOL_FIELDS)


def with_hidden_system_prompt(
    messages: Sequence[Mapping[str, str]], hidden: str | None
) -> list[dict[str, str]]:
    """The conversation the teacher sees (see module docstring): ``hidden`` first, merged with the
    conversation's own leading system message into one; a copy of ``messages`` when ``hidden`` is empty."""
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not hidden:
        return out
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": f"{hidden}\n\n{out[0]['content']}"}, *out[1:]]
    return [{"role": "system", "content": hidden}, *out]
