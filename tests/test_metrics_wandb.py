"""W&B resume into the same run (gadjax.metrics): the run id is kept in <run_dir>/wandb_run_id and passed
back with resume="allow". wandb is an optional dependency that the test venv does not install, so the
W&B client here is a stand-in module recording what wandb.init receives; with wandb installed the real
client runs offline (WANDB_MODE=offline) through the same calls."""

from __future__ import annotations

import json
import sys
import types

import pytest

from gadjax.metrics import WANDB_ID_FILE, MetricsWriter


class _FakeRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: runs.append(_FakeRun(kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return runs


def _writer(run_dir, resume_step=None):
    return MetricsWriter(
        str(run_dir), tensorboard=False, wandb=True, wandb_project="p", config={"a": 1},
        resume_step=resume_step,
    )  # fmt: skip


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path, fake_wandb):
    w = _writer(tmp_path)
    w.write(1, {"loss": 0.5}, stage="gad")
    w.close()
    first = fake_wandb[0]
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert first.kwargs["id"] == run_id and first.kwargs["resume"] == "allow" and first.finished
    assert first.kwargs["project"] == "p" and first.kwargs["config"] == {"a": 1}
    assert first.logged == [(1, {"gad/step": 1, "gad/time": first.logged[0][1]["gad/time"], "gad/loss": 0.5})]

    w = _writer(tmp_path, resume_step=1)  # --config.resume=true: the same W&B run continues
    w.write(2, {"loss": 0.4}, stage="gad")
    w.close()
    assert fake_wandb[1].kwargs["id"] == run_id and fake_wandb[1].kwargs["resume"] == "allow"
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    other = tmp_path / "other"  # a new run_dir is a new W&B run
    _writer(other).close()
    assert fake_wandb[2].kwargs["id"] != run_id
    assert (other / WANDB_ID_FILE).read_text().strip() == fake_wandb[2].kwargs["id"]


def test_wandb_not_installed_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match=r"config.metrics.wandb: wandb is not installed \(pip install"):
        _writer(tmp_path)


def test_real_wandb_offline_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    w = _writer(tmp_path)
    first = w._wandb.id
    w.close()
    w = _writer(tmp_path, resume_step=0)
    assert w._wandb.id == first
    w.close()
