"""Online mode with the REAL gadjax.teacher client over HTTP on loopback (the teacher helper's fake
OpenAI server, failing some requests): batches equal the offline corpus, and a restore from the data
state re-asks the server for nothing that was already consumed (the client's SQLite cache answers)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import gad_rows, write_jsonl

from gadjax.data.pipeline import DataConfig, DataPipeline
from gadjax.data.sources import JsonlSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teacher"))
fake_server = pytest.importorskip("fake_server")
teacher = pytest.importorskip("gadjax.teacher")


def make(src, tok, client=None):
    cfg = DataConfig(batch_size=4, max_prompt_tokens=32, max_response_tokens=32, seed=2, num_epochs=1,
                     teacher_max_ahead=4, buckets="multiple:8", min_bucket=8)
    return DataPipeline(src, tok, cfg, teacher=client, process_index=0, process_count=1)


def client_for(srv, cache):
    return teacher.TeacherClient(teacher.TeacherConfig(
        base_url=srv.base_url, model="fake", api_key_env=None, timeout_s=0.5, max_retries=20,
        backoff_base_s=0.002, backoff_max_s=0.02, concurrency=4, cache_path=str(cache)))


def test_online_http_teacher_with_faults_and_restore(tmp_path, tokenizer):
    rows = gad_rows(16)
    prompts = JsonlSource(write_jsonl(tmp_path / "p.jsonl", [{"messages": r["content"]} for r in rows]))
    answers = [{"messages": r["content"], "response": fake_server.answer_for(r["content"][0]["content"])}
               for r in rows]
    expected = list(make(JsonlSource(write_jsonl(tmp_path / "o.jsonl", answers)), tokenizer).iterator())

    with fake_server.FakeOpenAI(fault_rate=0.3, faults=("429", "500", "reset"), seed=3) as srv:
        with client_for(srv, tmp_path / "cache.sqlite") as client:
            it = make(prompts, tokenizer, client).iterator()
            head = [next(it), next(it)]
            state = it.get_state()
            it.close()
        consumed = {rows[i]["content"][0]["content"] for b in head for i in b["example_id"]}
        srv.clear()
        with client_for(srv, tmp_path / "cache.sqlite") as client:
            tail = list(make(prompts, tokenizer, client).iterator(state))
        asked_again = set(srv.prompts_seen())
    assert not consumed & asked_again  # consumed prompts came from the cache
    got = head + tail
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def make_limited(src, tok, client, max_failed):
    cfg = DataConfig(batch_size=4, max_prompt_tokens=32, max_response_tokens=32, seed=2, num_epochs=1,
                     teacher_max_ahead=4, buckets="multiple:8", min_bucket=8, teacher_max_failed=max_failed)
    return DataPipeline(src, tok, cfg, teacher=client, process_index=0, process_count=1)


def test_refused_prompts_are_skipped_counted_and_past_the_limit_the_state_is_the_last_batch(
    tmp_path, tokenizer
):
    """The real client against a loopback server that refuses 3 prompts for good (content filter): the
    batches hold every other row and none of those, the refusals are counted (dropped teacher_failed);
    with teacher_max_failed=1 the second refusal raises TooManyFailedPrompts and the iterator's state is
    the one after the last batch it returned (a resume reads the interrupted batch again)."""
    from gadjax.teacher.errors import TooManyFailedPrompts

    rows = gad_rows(16)
    prompts = JsonlSource(write_jsonl(tmp_path / "p.jsonl", [{"messages": r["content"]} for r in rows]))
    refused_ids = {3, 7, 12}
    with fake_server.FakeOpenAI() as srv:
        for i in refused_ids:
            srv.always[rows[i]["content"][0]["content"]] = "refuse"
        with client_for(srv, tmp_path / "cache.sqlite") as client:
            it = make_limited(prompts, tokenizer, client, -1).iterator()
            batches = list(it)
            stats = it.stats.as_dict()
        assert stats["dropped"] == {"teacher_failed": 3} and it.teacher_failed == 3
        ids = [int(i) for b in batches for i in b["example_id"]]
        assert len(batches) == 3 and len(set(ids)) == 12 and not set(ids) & refused_ids

        with client_for(srv, tmp_path / "cache.sqlite") as client:
            it = make_limited(prompts, tokenizer, client, 1).iterator()
            got, states = [], [it.get_state()]
            with pytest.raises(TooManyFailedPrompts, match=r"^2 prompts .*teacher\.max_failed_prompts=1 "):
                while True:
                    got.append(next(it))
                    states.append(it.get_state())
            assert it.get_state() == states[-1]  # the half-read batch is not part of the state
            assert it.get_state()["stats"]["dropped"].get("teacher_failed", 0) <= 1
            if len(states) > 1:
                it.unread_last_batch()
                assert it.get_state() == states[-2]
        with client_for(srv, tmp_path / "cache.sqlite") as client:  # resuming from it: same batches again
            again = list(make_limited(prompts, tokenizer, client, -1).iterator(states[-1]))
        for a, b in zip(got + again, batches, strict=True):
            np.testing.assert_array_equal(a["example_id"], b["example_id"])
