"""Length statistics against numpy; marker rates on hand-made texts."""

from __future__ import annotations

import numpy as np
import pytest

from gadjax.eval.lengths import length_stats
from gadjax.eval.markers import compile_marker, marker_hits, marker_rate


def test_length_stats_match_numpy():
    lengths = [3, 10, 7, 1, 16, 16, 5, 9, 2, 12, 16]
    trunc = [x == 16 for x in lengths]
    s = length_stats(lengths, trunc)
    x = np.array(lengths, float)
    assert s["n"] == 11
    assert s["mean"] == pytest.approx(x.mean())
    assert s["median"] == 9.0
    # p90 by linear interpolation between order statistics: rank 0.9 * 10 = 9 -> sorted[9] = 16
    assert s["p90"] == pytest.approx(16.0)
    assert s["min"] == 1 and s["max"] == 16
    assert s["truncated"] == 3 and s["truncation_rate"] == pytest.approx(3 / 11)


def test_length_stats_interpolated_p90_and_empty():
    s = length_stats([1, 2, 3, 4])  # rank 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert s["p90"] == pytest.approx(3.7)
    assert "truncation_rate" not in s
    e = length_stats([], [])
    assert e["n"] == 0 and e["mean"] is None and e["truncation_rate"] is None
    with pytest.raises(ValueError, match="2 lengths but 1 truncation flags"):
        length_stats([1, 2], [True])


def test_marker_regex_phrase_and_case():
    texts = ["Ahoy matey! Fine day.", "ahoy there", "Hello.", "Arr, AHOY!"]
    assert marker_hits(texts, compile_marker("Ahoy")) == [True, False, False, False]
    assert marker_hits(texts, compile_marker("ahoy", ignore_case=True)) == [True, True, False, True]
    assert marker_hits(["costs $5 (approx.)", "costs 5"], compile_marker("$5 (approx.)", literal=True)) == [
        True, False]
    assert marker_hits(["end. Kind regards."], compile_marker(r"Kind regards\.$")) == [True]
    assert marker_rate([True, False, True, True]) == {"hits": 3, "n": 4, "rate": 0.75}
    assert marker_rate([]) == {"hits": 0, "n": 0, "rate": None}


def test_bad_marker_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        compile_marker("(unclosed")
    with pytest.raises(ValueError, match="empty"):
        compile_marker("")
