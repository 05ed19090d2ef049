"""Evaluation during training and checkpoint selection (gadjax.trainer.evaluation) on configs/tiny.py."""

from __future__ import annotations

import json
import os

import pytest

from gadjax import config as config_lib
from gadjax.metrics import read_metrics
from gadjax.trainer import validation
from tests.eval.fake_judge import start_judge
from tests.trainer.train_helpers import REPO, tiny_config
from tests.trainer.train_helpers import comparable as _compared


@pytest.mark.slow
def test_evaluation_during_training_selects_and_exports_the_best(tmp_path, monkeypatch):
    """eval.every=2 on held-out rows: eval/ metrics in the step records, generations per evaluation,
    training metrics bitwise equal to the same run without evaluation; select.*: the best in-band
    evaluation is saved outside the keep-N rotation, explained in selection.json and exported.
    eval.judge_every=4: the judge (a real HTTP server on loopback) is asked at step 4 only, once per
    prompt and phase, through its cache in the run directory."""
    from transformers import AutoModelForCausalLM

    from gadjax.train import run

    common = {"stage": "gad", "train.steps": 4, "mesh.shape": (1, 1, 1)}
    common.update({"checkpoint.every": 1, "checkpoint.keep": 1})
    run(tiny_config(tmp_path / "plain", **common))
    data = os.path.join(REPO, "configs", "tiny_assets", "train.jsonl")
    c = tiny_config(
        tmp_path / "evald",
        **common,
        **{"eval.every": 2, "eval.data": [data], "eval.max_prompts": 12, "eval.marker": "Indeed"},
        **{"select.metric": "rouge_l", "select.mode": "max", "select.length_band": (0.0, 50.0)},
    )
    judge = start_judge(monkeypatch)  # every rating "8 6": student 6 vs the judge's own answer 8
    try:
        c.eval.judge_every = 4
        c.eval.judge.update(base_url=judge.base_url, model="fake-judge", api_key_env="")
        run(c)
        judge_requests = list(judge.requests)
    finally:
        judge.stop()
    plain, evald = read_metrics(str(tmp_path / "plain" / "run")), read_metrics(c.run_dir)
    for a, b in zip(plain, evald, strict=True):
        assert _compared(a) == {k: v for k, v in _compared(b).items() if not k.startswith("eval/")}
    evals = {r["step"]: r for r in evald if "eval/rouge_l" in r}
    assert sorted(evals) == [2, 4]
    for r in evals.values():
        assert {
            "eval/length_mean",
            "eval/marker_rate",
            "eval/c2st_accuracy",
            "eval/teacher_length_mean",
        } <= set(r)
    tb = _tensorboard_scalars(os.path.join(c.run_dir, "tensorboard"))
    assert tb["gad/eval/rouge_l"] == {
        s: pytest.approx(evals[s]["eval/rouge_l"]) for s in (2, 4)
    }  # <stage>/<key>
    assert set(tb["gad/eval/judge_score"]) == {4} and set(tb["gad/g_loss"]) == {1, 2, 3, 4}
    assert "eval/judge_score" not in evals[2]
    assert evals[4]["eval/judge_score"] == pytest.approx(100 * 6 / 14) and evals[4]["eval/judge_n_ok"] == 12
    assert len(judge_requests) == 2 * 12  # a reference answer and a rating per prompt, at step 4 only
    assert os.path.exists(os.path.join(c.run_dir, "judge_cache.sqlite"))
    with open(os.path.join(c.run_dir, "eval", "step_2.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert lines[0]["step"] == 2 and len(lines) == 1 + 12 and "student_response" in lines[1]

    with open(os.path.join(c.run_dir, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    best = max(evals, key=lambda s: (evals[s]["eval/rouge_l"], -s))  # ties: the earlier step
    assert sel["selected_step"] == best and sel["candidates"] == 2 and sel["out_of_band_steps"] == []
    assert sel["selected_value"] == pytest.approx(evals[best]["eval/rouge_l"])
    assert os.listdir(os.path.join(c.run_dir, "best")) == [str(best)]
    assert os.listdir(os.path.join(c.run_dir, "checkpoints")) == ["4"]  # rotation kept one; best is apart
    AutoModelForCausalLM.from_pretrained(os.path.join(c.run_dir, "export", "best"))


def test_evaluation_settings_are_validated(tmp_path):
    with pytest.raises(config_lib.ConfigValidationError, match="eval.data"):
        validation.validate(tiny_config(tmp_path, **{"eval.every": 5}))
    with pytest.raises(config_lib.ConfigValidationError, match="select.metric"):
        validation.validate(tiny_config(tmp_path, **{"select.metric": "rouge_l"}))
    with pytest.raises(config_lib.ConfigValidationError, match="select.length_band"):
        validation.validate(tiny_config(tmp_path, **{"select.length_band": (2.0, 1.0)}))
    evals = {"eval.every": 5, "eval.data": [os.path.join(REPO, "configs", "tiny_assets", "train.jsonl")]}
    with pytest.raises(config_lib.ConfigValidationError, match="multiple of eval.every"):
        validation.validate(tiny_config(tmp_path, **evals, **{"eval.judge_every": 7}))
    with pytest.raises(config_lib.ConfigValidationError, match="eval.judge.base_url"):
        validation.validate(tiny_config(tmp_path, **evals, **{"eval.judge_every": 10}))
    with pytest.raises(config_lib.ConfigValidationError, match="needs the judge"):
        validation.validate(tiny_config(tmp_path, **evals, **{"select.metric": "judge_score"}))
    with pytest.raises(config_lib.ConfigValidationError, match="does not exist"):
        validation.validate(tiny_config(tmp_path, **{"eval.every": 5, "eval.data": ["/no/such.jsonl"]}))


def _tensorboard_scalars(logdir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the event files, read as TFRecords of tensorboardX's Event protos."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])  # skip the length CRC
            pos += 12 + length + 4  # and the data CRC
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out
