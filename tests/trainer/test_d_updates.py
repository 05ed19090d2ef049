"""The gad stage's D and reward knobs (configs/tiny.py, 8-device CPU mesh): train.d_updates (several D
updates per step on the step's pairs) and reward.norm_by_std (GRPO vs Dr.GRPO advantages)."""

from __future__ import annotations

import pytest

from gadjax import config as config_lib
from gadjax.metrics import read_metrics
from gadjax.trainer import validation
from tests.trainer.train_helpers import tiny_config

# Greedy rollouts: a float32-rounding difference between program shapes cannot flip a sampled token.
COMMON = {"train.steps": 2, "rollout.temperature": 0.0, "checkpoint.every": 10, "export.hf": False}
FIRST_UPDATE = ("d_loss", "d_acc", "teacher_score_mean", "student_score_mean", "reward_mean", "g_loss")


def _run(tmp_path, name, **overrides):
    from gadjax.train import run

    run(tiny_config(tmp_path / name, stage="gad", **{**COMMON, **overrides}))
    return read_metrics(str(tmp_path / name / "run"))


@pytest.mark.slow
def test_more_d_updates_keep_the_pre_update_rewards_and_move_d_further(tmp_path):
    one = _run(tmp_path, "one")
    three = _run(tmp_path, "three", **{"train.d_updates": 3})
    # Step 1: the metrics and G's rewards come from D before any update, so they are the same.
    for key in FIRST_UPDATE:
        assert abs(one[0][key] - three[0][key]) <= 1e-5, (key, one[0][key], three[0][key])
    assert "d_loss_last" not in one[0]
    # Two more updates on the same pairs lower D's loss on them (Bradley-Terry, AdamW at the tiny lr).
    assert three[0]["d_loss_last"] < three[0]["d_loss"]
    # The step's FLOPs estimate (flops_per_s x time_step_s) counts the two extra D passes.
    flops = [r[0]["flops_per_s"] * r[0]["time_step_s"] for r in (one, three)]
    assert flops[1] > flops[0] * (1 + 1e-6), flops
    # Step 2 sees a D that took three updates instead of one.
    assert abs(one[1]["d_loss"] - three[1]["d_loss"]) > 1e-6


@pytest.mark.slow
def test_d_updates_on_packed_rows_equal_padded(tmp_path):
    padded = _run(tmp_path, "padded", **{"train.d_updates": 2})
    packed = _run(tmp_path, "packed", **{"train.d_updates": 2, "train.packing": True})
    for r1, r2 in zip(padded, packed, strict=True):
        for key in (*FIRST_UPDATE, "d_loss_last"):
            assert abs(r1[key] - r2[key]) <= 1e-5, (key, r1[key], r2[key])


def test_d_updates_must_be_positive(tmp_path):
    c = tiny_config(tmp_path, stage="gad", **{"train.d_updates": 0})
    with pytest.raises(config_lib.ConfigValidationError, match=r"train\.d_updates"):
        validation.validate(c)


@pytest.mark.slow
def test_reward_without_std_norm_keeps_the_rewards_and_changes_the_advantages(tmp_path):
    # Sampled rollouts (greedy ones make the N samples of a prompt identical: zero advantages either way);
    # both runs draw the same first-step samples from the same key.
    grpo = _run(tmp_path, "grpo", **{"rollout.temperature": 1.0})
    dr = _run(tmp_path, "dr", **{"rollout.temperature": 1.0, "reward.norm_by_std": False})
    for key in ("reward_mean", "reward_std", "student_score_mean", "d_loss"):
        assert abs(grpo[0][key] - dr[0][key]) <= 1e-5, key
    # Unit-std groups vs raw centred scores: the same rewards, different advantage magnitudes.
    assert abs(grpo[0]["advantage_abs_mean"] - dr[0]["advantage_abs_mean"]) > 1e-4
    assert abs(dr[0]["advantage_mean"]) <= 1e-5  # still centred per group
