"""A long run that looks after itself (gadjax.trainer.loop): preemption with resume, a damaged checkpoint,
the teacher's spending limit; the train CLI in a subprocess on configs/tiny.py."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from gadjax.metrics import read_metrics
from tests.trainer.train_helpers import REPO, run_cli, tiny_config
from tests.trainer.train_helpers import comparable as _compared


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_and_resume_survives_a_damaged_checkpoint(tmp_path):
    """SIGTERM after step 3 (as a preemption notice): the step finishes, checkpoint 3 is saved although
    checkpoint.every is 2, and the process exits PREEMPTED_EXIT_CODE. Then checkpoint 3 loses its G weights
    (removed by hand, a full disk): resume says which and why, sets it aside, continues from checkpoint 2,
    and ends bitwise where an uninterrupted run does, with each step once in metrics.jsonl."""
    import shutil

    from gadjax.trainer.preemption import PREEMPTED_EXIT_CODE

    common = ["--config.stage=seqkd", "--config.train.steps=4", "--config.checkpoint.every=2"]
    straight = tmp_path / "straight"
    run_cli(tmp_path, *common, f"--config.run_dir={straight}")
    run = tmp_path / "stopped"
    proc = run_cli(
        tmp_path, *common, f"--config.run_dir={run}", "--config.train.debug_signal_at_step=3", check=False
    )
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stderr[-2000:]
    assert "stopped by SIGTERM after step 3" in proc.stderr and "--config.resume=true" in proc.stderr
    assert len(read_metrics(str(run))) == 3
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "3"]
    assert not (run / "export").exists()  # not the end of training: nothing exported

    shutil.rmtree(run / "checkpoints" / "3" / "g_params")
    proc = run_cli(tmp_path, *common, f"--config.run_dir={run}", "--config.resume=true")
    assert "3 cannot be restored" in proc.stderr, proc.stderr[-3000:]
    assert "resumed from checkpoint 2, not the newest" in proc.stderr
    assert any(n.startswith("3.damaged-") for n in os.listdir(run / "checkpoints"))  # kept, set aside
    a, b = read_metrics(str(straight)), read_metrics(str(run))
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # each step once; the replayed step 3 moved aside:
    with open(run / "metrics.replaced.jsonl", encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == [3]
    for ra, rb in zip(a, b, strict=True):
        assert _compared(ra) == _compared(rb), ra["step"]
    from safetensors.numpy import load_file

    pa = load_file(str(straight / "export" / "student" / "model.safetensors"))
    pb = load_file(str(run / "export" / "student" / "model.safetensors"))
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.mark.slow
def test_online_teacher_spending_limit_stops_and_the_resume_pays_only_the_rest(tmp_path):
    """teacher.max_requests=K with prompts the teacher must answer (a real loopback server): exactly K
    requests are paid, the run exits 3 with what was spent; a resume with a higher limit completes
    without paying again for the K cached answers."""
    sys.path.insert(0, os.path.join(REPO, "tests", "teacher"))
    from fake_server import FakeOpenAI

    prompts = tmp_path / "prompts.jsonl"
    with open(os.path.join(REPO, "configs", "tiny_assets", "train.jsonl"), encoding="utf-8") as src:
        rows = [json.loads(line) for line in src][:24]
    prompts.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    with FakeOpenAI() as srv:
        common = [
            "--config.stage=seqkd", "--config.train.steps=2", f"--config.data.train={prompts}",
            "--config.teacher.enabled=true", f"--config.teacher.base_url={srv.base_url}",
            "--config.teacher.model=fake", "--config.teacher.api_key_env=", "--config.teacher.max_tokens=8",
            f"--config.run_dir={run_dir}", "--config.checkpoint.every=1",
        ]  # fmt: skip
        proc = run_cli(tmp_path, *common, "--config.teacher.max_requests=5", check=False)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "spending limit reached: 5 requests" in proc.stderr, proc.stderr[-3000:]
        assert len(srv.prompts_seen()) == 5
        paid_first = set(srv.prompts_seen())
        srv.clear()
        run_cli(tmp_path, *common, "--config.teacher.max_requests=100", "--config.resume=true")
        assert not paid_first & set(srv.prompts_seen())  # nothing paid twice
    assert [r["step"] for r in read_metrics(str(run_dir))] == [1, 2]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_a_clear_error_and_resume_continues(tmp_path):
    """The disk fills after step 3 (a real file-size limit: the kernel refuses the write): saving
    checkpoint 4 raises StorageWriteError (gadjax.train exits 74) naming the step and what is intact;
    keep=1 rotation has not deleted checkpoint 2; with space again, resume continues from 2 and finishes."""
    import resource

    from gadjax.storage import STORAGE_ERROR_EXIT_CODE, StorageWriteError
    from gadjax.train import run

    assert STORAGE_ERROR_EXIT_CODE == 74  # documented in the README and gadjax/train.py
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def disk_fills(steps_done, trainer):
        if steps_done == 3:
            trainer.ckpt.wait()  # checkpoint 2's background write is committed first
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the G weights alone are ~100 KB

    common = {"stage": "seqkd", "train.steps": 4, "checkpoint.every": 2, "checkpoint.keep": 1}
    common["metrics.tensorboard"] = False
    c = tiny_config(tmp_path, **common)
    try:
        with pytest.raises(StorageWriteError) as err:
            run(c, on_step=disk_fills)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    msg = str(err.value)
    assert (
        msg.startswith("checkpoint 4 could not be written to")
        and "Committed checkpoints [2] are intact" in msg
    )
    assert not os.path.exists(os.path.join(c.run_dir, "export", "student"))

    c.resume = True
    run(c)
    assert [r["step"] for r in read_metrics(c.run_dir)] == [1, 2, 3, 4]
    assert os.path.exists(os.path.join(c.run_dir, "export", "student", "model.safetensors"))


@pytest.mark.slow
def test_refused_prompts_are_skipped_and_counted_and_past_the_limit_the_run_stops_cleanly(tmp_path):
    """A real loopback teacher refuses (content filter) every prompt after the first 10 it sees. With
    teacher.max_failed_prompts=2 the run trains step 1, then the third refusal stops it before step 2:
    checkpoint 1 saved, exit 4 (TEACHER_FAILURES_EXIT_CODE), one line naming the limit, each skipped prompt
    logged with its row. The resume with a higher limit skips the refused prompts again (recorded in the
    cache: not asked again), completes, and counts them in teacher_failed_prompts; nothing is paid twice."""
    from gadjax.train import TEACHER_FAILURES_EXIT_CODE

    sys.path.insert(0, os.path.join(REPO, "tests", "teacher"))
    from fake_server import FakeOpenAI

    prompts = tmp_path / "prompts.jsonl"
    with open(os.path.join(REPO, "configs", "tiny_assets", "train.jsonl"), encoding="utf-8") as src:
        rows = [json.loads(line) for line in src][:40]
    prompts.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    with FakeOpenAI() as srv:
        srv.refuse_after = 10
        common = [
            "--config.stage=seqkd", "--config.train.steps=2", f"--config.data.train={prompts}",
            "--config.teacher.enabled=true", f"--config.teacher.base_url={srv.base_url}",
            "--config.teacher.model=fake", "--config.teacher.api_key_env=", "--config.teacher.max_tokens=8",
            "--config.teacher.max_ahead=1", "--config.teacher.concurrency=1",  # requests in row order
            f"--config.run_dir={run_dir}", "--config.checkpoint.every=100",
        ]  # fmt: skip
        proc = run_cli(tmp_path, *common, "--config.teacher.max_failed_prompts=2", check=False)
        assert proc.returncode == TEACHER_FAILURES_EXIT_CODE == 4, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("gadjax.train: 3 prompts the teacher did not answer were skipped, more than "
                               "teacher.max_failed_prompts=2"), last  # fmt: skip
        assert proc.stderr.count("teacher: skipped row ") == 3 and f"({prompts}:" in proc.stderr
        assert "content_filter" in proc.stderr
        assert sorted(os.listdir(run_dir / "checkpoints")) == ["1"]  # the clean stop saved step 1
        assert [r["step"] for r in read_metrics(str(run_dir))] == [1]
        paid = set(srv.prompts_seen("ok"))
        refused = set(srv.prompts_seen("refuse"))
        assert len(paid) == 10 and 3 <= len(refused) <= 4  # max_ahead=1: one more may have been asked

        srv.clear()
        proc = run_cli(tmp_path, *common, "--config.teacher.max_failed_prompts=100", "--config.resume=true")
        assert not (paid | refused) & set(srv.prompts_seen())  # nothing asked twice
        assert proc.stderr.count("teacher: skipped row ") >= 3  # the 3 again (from the cache), maybe more
    records = read_metrics(str(run_dir))
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["teacher_failed_prompts"] == 0
    assert records[1]["teacher_failed_prompts"] == proc.stderr.count("teacher: skipped row ") >= 3


def test_an_endpoint_that_fails_every_prompt_stops_with_one_line(tmp_path):
    """A wrong teacher URL (HTTP 404 from a real loopback server) is nothing a prompt can be skipped for:
    the run stops before its first step with exit 2 and one line naming the status, not a traceback."""
    sys.path.insert(0, os.path.join(REPO, "tests", "teacher"))
    from fake_server import FakeOpenAI

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    with FakeOpenAI() as srv:
        proc = run_cli(
            tmp_path, "--config.stage=seqkd", "--config.train.steps=1", f"--config.data.train={prompts}",
            "--config.data.batch_size=2", "--config.teacher.enabled=true",
            f"--config.teacher.base_url={srv.base_url}/wrong", "--config.teacher.model=fake",
            "--config.teacher.api_key_env=", f"--config.run_dir={tmp_path / 'run'}", check=False,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gadjax.train: teacher: ") and "HTTP 404" in last, last
    assert "Traceback" not in proc.stderr
