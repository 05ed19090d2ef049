"""Incremental detokenization for ``stream: true`` (gadjax.serving.streaming) against the tokenizer's own
decode (transformers), on text with two-, three- and four-byte UTF-8 characters split across tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from gadjax.serving.protocol import apply_stop
from gadjax.serving.streaming import ChoiceStream, IncrementalDecoder
from tests.serving.serve_fixtures import TOKENIZER

TEXT = "héllo 世界 🙂 ok, and then: the end 世界🙂🙂 done"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def _decode(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def test_token_by_token_deltas_never_split_a_character(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    partial = [tok.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    assert any(p.endswith("\ufffd") for p in partial)  # the tokenizer really splits characters
    dec = IncrementalDecoder(_decode(tok))
    deltas = [dec.push([i]) for i in ids]
    assert "".join(deltas) == tok.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) >= 10  # many deltas, not one at the end


@pytest.mark.parametrize("stops", [(), ("the end",), ("🙂",), ("x-never", "then:")])
@pytest.mark.parametrize("step", [1, 3])
def test_choice_stream_concatenates_to_the_non_streaming_text(tok, stops, step):
    """Pushed in chunks of `step` tokens (the engine's decode chunks) plus the stop token, a choice's
    deltas concatenate to apply_stop(decode(all)), the text a non-streaming request returns."""
    ids = tok.encode(TEXT, add_special_tokens=False)
    want, found = apply_stop(tok.decode(ids, skip_special_tokens=True), stops)
    stream = ChoiceStream(_decode(tok), {tok.eos_token_id}, stops)
    pieces = [ids[k : k + step] for k in range(0, len(ids), step)]
    pieces[-1] = [*pieces[-1], tok.eos_token_id]
    deltas = [stream.push(p) for p in pieces]
    deltas.append(stream.finish(ids))
    assert "".join(deltas) == want
    assert stream.stopped == found
    if found:  # nothing at or after the stop string was ever sent, not even its first characters
        assert all(stops[-1] not in d for d in deltas)
