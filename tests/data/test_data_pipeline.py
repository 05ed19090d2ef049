"""The grain pipeline: determinism, epochs, resume, masks / lengths / limits, online teacher mode."""

import json

import numpy as np
import pytest
from data_fixtures import FakeTeacher, echo_answer, gad_rows, write_jsonl

from gadjax.data.batching import bucket_length, positions
from gadjax.data.pipeline import DataConfig, DataPipeline
from gadjax.data.rows import DataError
from gadjax.data.sources import JsonlSource


def pipeline(src, tok, teacher=None, **kw):
    cfg = DataConfig(**{"batch_size": 4, "max_prompt_tokens": 32, "max_response_tokens": 16, **kw})
    return DataPipeline(src, tok, cfg, teacher=teacher, process_index=0, process_count=1)


def ids(batches):
    return [b["example_id"].tolist() for b in batches]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture
def src20(tmp_path):
    return JsonlSource(write_jsonl(tmp_path / "a.jsonl", gad_rows(20)))


def test_seeded_order_epochs_and_coverage(src20, tokenizer):
    run = lambda seed: list(pipeline(src20, tokenizer, seed=seed, num_epochs=3).iterator())
    a, b, c = run(7), run(7), run(8)
    assert_same(a, b)  # same seed -> same batches
    assert ids(a) != ids(c)  # another seed -> another order
    flat = [i for batch in ids(a) for i in batch]
    epochs = [flat[k * 20:(k + 1) * 20] for k in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(20))  # every row once per epoch
    assert len({tuple(e) for e in epochs}) == 3  # a different order each epoch
    assert epochs[0] != list(range(20))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_resume_from_state_equals_uninterrupted(tmp_path, src20, tokenizer, online):
    if online:  # same prompts without responses: the fake teacher answers them
        prompts = [{"messages": r["content"]} for r in gad_rows(20)]
        src = JsonlSource(write_jsonl(tmp_path / "p.jsonl", prompts))
    else:
        src = src20
    kw = dict(seed=3, num_epochs=2, max_prompt_tokens=8, buckets="multiple:4", min_bucket=4)
    full_it = pipeline(src, tokenizer, FakeTeacher() if online else None, **kw).iterator()
    full = list(full_it)
    assert len(full) == 10
    for k in (0, 3, 5, 9):
        it = pipeline(src, tokenizer, FakeTeacher() if online else None, **kw).iterator()
        head = [next(it) for _ in range(k)]
        state = json.loads(json.dumps(it.get_state()))  # goes into the checkpoint as JSON
        teacher = FakeTeacher() if online else None
        resumed = pipeline(src, tokenizer, teacher, **kw).iterator(state)
        assert_same(head + list(resumed), full)
        assert resumed.stats.as_dict() == full_it.stats.as_dict()  # counters resume too
        if online and 4 * k < 20:
            # The restored run asks the teacher for exactly the rest of epoch 1 first: nothing consumed
            # before the checkpoint is requested again (the real client would also hit its cache).
            consumed = [str(i) for b in head for i in b["example_id"]]
            rest = teacher.requests[:20 - len(consumed)]
            assert sorted(map(int, consumed + rest)) == list(range(20))
    # set_state on a live iterator rewinds it as well
    it = pipeline(src, tokenizer, FakeTeacher() if online else None, **kw).iterator()
    s2 = (next(it), next(it), it.get_state())[2]
    rest = list(it)
    it.set_state(s2)
    assert_same(list(it), rest)


def test_online_teacher_matches_offline_corpus(tmp_path, tokenizer):
    rows = gad_rows(12)
    prompts = [{"messages": r["content"]} for r in rows]
    # Row 5 already has a response: it must skip the teacher but keep its place in the order.
    prompts[5] = {"messages": rows[5]["content"], "response": "kept answer"}
    offline_rows = [{"messages": r["content"], "response": echo_answer(r["content"])} for r in rows]
    offline_rows[5] = prompts[5]
    online_src = JsonlSource(write_jsonl(tmp_path / "p.jsonl", prompts))
    offline_src = JsonlSource(write_jsonl(tmp_path / "o.jsonl", offline_rows))
    teacher = FakeTeacher()
    it = pipeline(online_src, tokenizer, teacher, seed=11, num_epochs=1, teacher_max_ahead=3).iterator()
    online = list(it)
    offline = list(pipeline(offline_src, tokenizer, seed=11, num_epochs=1).iterator())
    assert_same(online, offline)
    order = [i for b in ids(online) for i in b]
    assert teacher.requests == [str(i) for i in order if i != 5]  # asked in the seeded order, once
    stats = it.stats.as_dict()
    assert stats["teacher_rows"] == 11 and stats["rows_batched"] == 12


def test_masks_positions_and_lengths_on_hand_made_rows(tmp_path, tokenizer):
    rows = [{"prompt": "hello world", "response": "paris"},
            {"messages": [{"role": "system", "content": "be a bot"}, {"role": "user", "content": "what"}],
             "response": "one two three"}]
    src = JsonlSource(write_jsonl(tmp_path / "h.jsonl", rows))
    (batch,) = list(pipeline(src, tokenizer, batch_size=2, shuffle=False, num_epochs=1, min_bucket=8,
                             max_prompt_tokens=64, max_response_tokens=16))
    # Reference: the tokenizer library's own chat template + encode.
    p0 = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}],
                                                         add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)
    p1 = tokenizer.encode(tokenizer.apply_chat_template(rows[1]["messages"], add_generation_prompt=True,
                                                         tokenize=False), add_special_tokens=False)
    assert len(p0) == 7 and len(p1) == 12  # <|im_start|> user hello world <|im_end|> <|im_start|> assistant
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    r0 = tokenizer.encode("paris", add_special_tokens=False) + [eos]
    r1 = tokenizer.encode("one two three", add_special_tokens=False) + [eos]
    P, R = 16, 8  # pow2 buckets of 12 and 4 (min 8)
    assert batch["prompt_ids"].dtype == np.int32 and batch["example_id"].dtype == np.int64
    np.testing.assert_array_equal(batch["prompt_ids"], [[pad] * (P - 7) + p0, [pad] * (P - 12) + p1])
    np.testing.assert_array_equal(batch["prompt_mask"], [[0] * (P - 7) + [1] * 7, [0] * (P - 12) + [1] * 12])
    np.testing.assert_array_equal(batch["response_ids"], [r0 + [pad] * (R - 2), r1 + [pad] * (R - 4)])
    np.testing.assert_array_equal(batch["response_mask"], [[1] * 2 + [0] * 6, [1] * 4 + [0] * 4])
    np.testing.assert_array_equal(batch["example_id"], [0, 1])
    pos = positions(np.concatenate([batch["prompt_mask"], batch["response_mask"]], axis=1))
    np.testing.assert_array_equal(pos[0], [0] * 9 + list(range(7)) + list(range(7, 9)) + [8] * 6)
    np.testing.assert_array_equal(pos[1], [0] * 4 + list(range(12)) + list(range(12, 16)) + [15] * 4)


def test_bucket_lengths():
    assert [bucket_length(n, 100, "pow2", 16) for n in (1, 16, 17, 64, 65, 100)] == [16, 16, 32, 64, 100, 100]
    assert [bucket_length(n, 200, "multiple:64", 1) for n in (1, 64, 65, 190)] == [64, 64, 128, 192]
    assert bucket_length(3, 50, "max") == 50
    with pytest.raises(ValueError):
        bucket_length(3, 50, "triangular")


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_overlong_rows_truncated_or_dropped_and_counted(tmp_path, tokenizer, mode):
    long_prompt = " ".join(f"w{i}" for i in range(20))
    rows = [{"prompt": "hello", "response": "paris"},  # 6 prompt tokens, 2 response tokens
            {"prompt": long_prompt, "response": "paris"},  # 25 prompt tokens
            {"prompt": "hello", "response": "one two three four five"},  # 6 response tokens
            {"prompt": "world", "response": "ok"}]
    src = JsonlSource(write_jsonl(tmp_path / "l.jsonl", rows))
    it = pipeline(src, tokenizer, batch_size=1, shuffle=False, num_epochs=1, min_bucket=1,
                  buckets="multiple:1",
                  max_prompt_tokens=10, max_response_tokens=4, overlong_prompt=mode,
                  overlong_response=mode).iterator()
    batches = list(it)
    stats = it.stats.as_dict()
    full_prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": long_prompt}],
                                                                  add_generation_prompt=True, tokenize=False),
                                   add_special_tokens=False)
    full_resp = tokenizer.encode("one two three four five", add_special_tokens=False)
    if mode == "truncate":
        assert ids(batches) == [[0], [1], [2], [3]]
        # Prompt keeps its END (the question and the assistant header).
        np.testing.assert_array_equal(batches[1]["prompt_ids"][0], full_prompt[-10:])
        # Response keeps its START, no EOS (the text did not end there).
        np.testing.assert_array_equal(batches[2]["response_ids"][0], full_resp[:4])
        assert tokenizer.eos_token_id not in batches[2]["response_ids"][0]
        assert (stats["prompt_truncated"], stats["response_truncated"], stats["dropped_total"]) == (1, 1, 0)
    else:
        assert ids(batches) == [[0], [3]]
        assert stats["dropped"] == {"prompt_too_long": 1, "response_too_long": 1}
        assert (stats["prompt_truncated"], stats["response_truncated"]) == (0, 0)
    assert stats["rows_read"] == 4


def test_missing_response_without_teacher_names_the_row(tmp_path, tokenizer):
    src = JsonlSource(write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}]))
    with pytest.raises(DataError, match=r"m\.jsonl:2: field 'response'"):
        list(pipeline(src, tokenizer, batch_size=2, shuffle=False, num_epochs=1))
    (batch,) = list(pipeline(src, tokenizer, batch_size=2, shuffle=False, num_epochs=1, prompts_only=True))
    assert set(batch) == {"prompt_ids", "prompt_mask", "example_id"}


def test_skipped_bad_rows_reported_in_stats(tmp_path, tokenizer):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "", "response": "b"}\n'
                     b'{"prompt": "c", "response": "d"}\n{oops\n')
    it = pipeline(JsonlSource(path, skip_bad_rows=True), tokenizer, batch_size=2, num_epochs=1).iterator()
    assert sorted(next(it)["example_id"].tolist()) == [0, 1]
    stats = it.stats.as_dict()
    assert stats["bad_rows_skipped"] == 2
    assert stats["bad_rows_by_reason"] == {"empty_field": 1, "bad_json": 1}


def test_remainder_dropped_for_training_kept_for_eval(src20, tokenizer):
    it = pipeline(src20, tokenizer, batch_size=8, num_epochs=1).iterator()
    assert [len(b["example_id"]) for b in it] == [8, 8]
    assert it.stats.as_dict()["remainder_dropped"] == 4
    it = pipeline(src20, tokenizer, batch_size=8, num_epochs=1, drop_remainder=False).iterator()
    assert [len(b["example_id"]) for b in it] == [8, 8, 4]


def test_response_the_teacher_cut_at_max_tokens_gets_no_eos(tmp_path, tokenizer):
    """finish_reason 'length' (the teacher's max_tokens ran out): no EOS, counted as truncated; a
    response that ended ('stop', or no reason recorded) gets its EOS."""
    rows = [{"prompt": "hello", "response": "one two", "finish_reason": "length"},
            {"prompt": "hello", "response": "one two", "finish_reason": "stop"},
            {"prompt": "hello", "response": "one two"}]
    src = JsonlSource(write_jsonl(tmp_path / "f.jsonl", rows))
    it = pipeline(src, tokenizer, batch_size=1, shuffle=False, num_epochs=1).iterator()
    cut, ended, unknown = (b["response_ids"][0][b["response_mask"][0] == 1].tolist() for b in it)
    words = tokenizer.encode("one two", add_special_tokens=False)
    assert cut == words
    assert ended == unknown == words + [tokenizer.eos_token_id]
    assert it.stats.as_dict()["response_truncated"] == 1
    bad = [{"prompt": "a", "response": "b", "finish_reason": 3}]
    with pytest.raises(DataError, match=r"f2\.jsonl:1: field 'finish_reason'"):
        JsonlSource(write_jsonl(tmp_path / "f2.jsonl", bad))
