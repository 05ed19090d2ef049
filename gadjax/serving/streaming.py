"""Token-by-token streaming for ``stream: true``: text decoded incrementally from the tokens the engine
reports, cut at stop strings exactly as the non-streaming answer, sent as ``chat.completion.chunk`` events.

The continuous engine reports each choice's tokens after every decode chunk (``on_tokens``); the static
engine reports nothing until the whole batch is done, so its stream carries each choice in one delta.
The streamed deltas of a choice concatenate to the non-streaming text of the same request (same seed):
the last delta is cut from the full decode, so a tokenizer whose pieces do not decode prefix-stably
still ends on the same text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from gadjax.serving.protocol import apply_stop

REPLACEMENT = "\ufffd"  # what a byte-level decode shows for an incomplete UTF-8 sequence


class IncrementalDecoder:
    """Text of a growing token sequence, given out as deltas that never split a multi-byte character.

    The window scheme of vLLM / TGI: decode ids[prefix:] and ids[prefix:read]; the difference is new
    text unless it ends in U+FFFD (the tail of a character is still to come). Decoding a window, not the
    whole sequence, keeps each step O(window)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, ids: Iterable[int]) -> str:
        """Add tokens; return the text they complete ('' while a character is still incomplete)."""
        self.ids.extend(int(i) for i in ids)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""


class ChoiceStream:
    """One choice's streamed text: decoded deltas, held back while they could be the start of a stop
    string, cut at the first stop string (as protocol.apply_stop cuts the non-streaming text)."""

    def __init__(self, decode: Callable[[list[int]], str], eos_ids: Iterable[int], stops: tuple[str, ...]):
        self._decoder = IncrementalDecoder(decode)
        self._decode = decode
        self._eos = frozenset(eos_ids)
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop string
        self.text = ""  # everything decoded so far
        self.sent = ""  # what the client has
        self.stopped = False  # a stop string was found: the rest of the choice is dropped

    def push(self, ids: Iterable[int]) -> str:
        """Tokens from the engine (a stop token ends the choice and is not text); the delta to send now."""
        if self.stopped:
            return ""
        ids = [i for i in ids if i not in self._eos]
        self.text += self._decoder.push(ids)
        cut, found = apply_stop(self.text, self._stops)
        if found:
            self.stopped = True
            return self._send(cut)
        return self._send(self.text[: len(self.text) - self._hold] if self._hold else self.text)

    def finish(self, token_ids: list[int]) -> str:
        """The rest of the text once the choice is done (``token_ids``: its Generation's, no stop token):
        the full decode with stops applied, from where the deltas left off."""
        full, found = apply_stop(self._decode(token_ids), self._stops)
        self.stopped = self.stopped or found
        if not full.startswith(self.sent):  # a decode that is not prefix-stable: never resend
            return ""
        return self._send(full)

    def _send(self, upto: str) -> str:
        if len(upto) <= len(self.sent):
            return ""
        delta, self.sent = upto[len(self.sent) :], upto
        return delta


def chunk_event(base: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One ``data: {chat.completion.chunk}`` event for choice ``index``."""
    body = {
        **base,
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def usage_event(base: dict[str, Any], usage: dict[str, int]) -> bytes:
    body = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return f"data: {json.dumps(body)}\n\n".encode()


def error_event(body: dict[str, Any]) -> bytes:
    """An error after the stream began (the status line is already sent): an ``{"error": ...}`` event."""
    return f"data: {json.dumps(body)}\n\n".encode()


DONE_EVENT = b"data: [DONE]\n\n"
