"""Checkpoint selection (gadjax.eval.selection): best in-band evaluation, earliest on ties."""

from __future__ import annotations

import pytest

from gadjax.eval.selection import Selector


def test_min_metric_picks_lowest_and_earliest_on_ties():
    sel = Selector(metric="c2st_accuracy", mode="min")
    assert sel.consider(4, {"c2st_accuracy": 0.60})
    assert sel.consider(8, {"c2st_accuracy": 0.52})
    assert not sel.consider(12, {"c2st_accuracy": 0.52})  # a tie keeps the earlier checkpoint
    assert not sel.consider(16, {"c2st_accuracy": 0.71})
    s = sel.summary()
    assert s["selected_step"] == 8 and s["selected_value"] == pytest.approx(0.52)
    assert s["candidates"] == 4 and s["out_of_band_steps"] == []


def test_tiebreak_and_max_mode():
    sel = Selector(metric="c2st_accuracy", tiebreak=("marker_abs_gap",))
    sel.consider(4, {"c2st_accuracy": 0.5, "marker_abs_gap": 0.2})
    assert sel.consider(8, {"c2st_accuracy": 0.5, "marker_abs_gap": 0.05})
    assert sel.best["step"] == 8
    judge = Selector(metric="judge_score", mode="max")
    judge.consider(50, {"judge_score": 48.0})
    assert judge.consider(100, {"judge_score": 49.5})
    assert not judge.consider(150, {"judge_score": 47.0})
    assert judge.summary()["selected_step"] == 100


def test_length_band_excludes_runaway_lengths():
    """The paper's guard: a high-scoring evaluation whose responses blew up is never selected."""
    sel = Selector(metric="score", mode="max", length_band=(0.8, 1.25), reference_length=100.0)
    assert sel.consider(50, {"score": 0.4, "length_mean": 110.0})
    assert not sel.consider(100, {"score": 0.9, "length_mean": 300.0})  # better, but out of band
    assert not sel.consider(150, {"score": 0.9, "length_mean": 79.0})  # just under the band
    assert sel.consider(200, {"score": 0.5, "length_mean": 125.0})  # the band's edge is inside
    s = sel.summary()
    assert s["selected_step"] == 200 and s["out_of_band_steps"] == [100, 150]


def test_nothing_selected_when_all_out_of_band():
    sel = Selector(metric="score", mode="max", length_band=(0.9, 1.1), reference_length=10.0)
    assert not sel.consider(1, {"score": 1.0, "length_mean": 30.0})
    assert sel.best is None and sel.summary()["selected_step"] is None


def test_nan_never_wins():
    sel = Selector(metric="score", mode="min")
    sel.consider(1, {"score": 0.7})
    assert not sel.consider(2, {"score": float("nan")})
    assert sel.best["step"] == 1


def test_bad_settings_and_missing_metric_are_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        Selector(metric="x", mode="best")
    with pytest.raises(ValueError, match="reference_length"):
        Selector(metric="x", length_band=(0.8, 1.2))
    with pytest.raises(ValueError, match="low <= high"):
        Selector(metric="x", length_band=(1.5, 1.2), reference_length=3.0)
    with pytest.raises(KeyError, match="'judge'"):
        Selector(metric="judge").consider(1, {"c2st_accuracy": 0.5})


def test_state_round_trip_continues_the_selection():
    """A resumed run (selection.json read back) keeps its best and compares new evaluations against it."""
    import json

    sel = Selector(metric="score", mode="max", length_band=(0.5, 2.0), reference_length=10.0)
    sel.consider(2, {"score": 0.3, "length_mean": 10.0})
    sel.consider(4, {"score": 0.6, "length_mean": 12.0})
    again = Selector(metric="score", mode="max", length_band=(0.5, 2.0), reference_length=10.0)
    again.restore(json.loads(json.dumps(sel.state())))
    assert again.history == sel.history and again.best["step"] == 4
    assert not again.consider(6, {"score": 0.6, "length_mean": 11.0})  # a tie keeps step 4
    assert again.consider(8, {"score": 0.7, "length_mean": 11.0})
