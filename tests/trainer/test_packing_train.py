"""train.packing end to end on configs/tiny.py (8-device CPU mesh): the same metrics as the padded layout."""

from __future__ import annotations

import pytest

from gadjax import config as config_lib
from gadjax.metrics import read_metrics
from gadjax.trainer import validation
from tests.trainer.train_helpers import tiny_config

GAD_METRICS = (
    "d_loss",
    "d_acc",
    "teacher_score_mean",
    "student_score_mean",
    "d_grad_norm",
    "reward_mean",
    "g_loss",
    "pg_loss",
    "kl_loss",
    "entropy",
    "g_grad_norm",
    "response_length_mean",
)


def _runs(tmp_path, stage, **common):
    from gadjax.train import run

    run(tiny_config(tmp_path / "padded", stage=stage, **common))
    run(tiny_config(tmp_path / "packed", stage=stage, **common, **{"train.packing": True}))
    return read_metrics(str(tmp_path / "padded" / "run")), read_metrics(str(tmp_path / "packed" / "run"))


def _same(padded, packed, keys):
    assert len(padded) == len(packed) == 3
    for r1, r2 in zip(padded, packed, strict=True):
        for key in keys:
            assert abs(r1[key] - r2[key]) <= 1e-5, (key, r1[key], r2[key])


@pytest.mark.slow
def test_packed_gad_run_equals_padded(tmp_path):
    """Three GAD steps (greedy rollouts: a float32-rounding difference cannot flip a sampled token)."""
    common = {"train.steps": 3, "rollout.temperature": 0.0, "checkpoint.every": 10, "export.hf": False}
    padded, packed = _runs(tmp_path, "gad", **common)
    _same(padded, packed, GAD_METRICS)
    assert all(0 < r["g_pack_fill"] <= 1 and r["d_pack_micro_batches"] >= 1 for r in packed)


@pytest.mark.slow
def test_packed_sft_run_equals_padded(tmp_path):
    common = {"train.steps": 3, "checkpoint.every": 10, "export.hf": False}
    padded, packed = _runs(tmp_path, "seqkd", **common)
    _same(padded, packed, ("g_loss", "sft_loss", "g_grad_norm", "sft_tokens"))


def test_pack_length_shorter_than_a_row_names_both_keys(tmp_path):
    c = tiny_config(tmp_path, **{"train.packing": True, "train.pack_length": 40})
    with pytest.raises(
        config_lib.ConfigValidationError, match=r"train\.pack_length.*data\.max_prompt_tokens"
    ):
        validation.validate(c)
    c = tiny_config(tmp_path, **{"train.packing": True, "train.pack_length": 64, "train.pack_rows": 2})
    with pytest.raises(config_lib.ConfigValidationError, match=r"train\.pack_rows.*rollout\.n_samples"):
        validation.validate(c)
