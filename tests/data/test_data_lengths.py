"""The shared length profile: the published means, the caps, and the shape kept when scaled."""

import numpy as np
import pytest

from gadjax.data.lengths import CPU, PAPER, get_profile


def test_paper_profile_matches_the_public_means_and_caps():
    stats = PAPER.expected_tokens(samples=400_000)
    # Means after clipping stay within a few percent of the published ones (LMSYS ~70, GPT-5-Chat ~330).
    assert 60 < stats["prompt_mean"] < 72
    assert 310 < stats["response_mean"] < 335
    # A row is roughly 400-500 tokens against 3,584 padded: ~11% real.
    assert 380 < stats["row_mean"] < 420
    assert 0.10 < stats["real_fraction_at_caps"] < 0.13
    # The long tail reaches the response cap for about one answer in a hundred.
    assert 0.003 < stats["response_at_cap_fraction"] < 0.03


def test_samples_stay_within_caps_and_are_reproducible():
    p, r = PAPER.sample(np.random.default_rng(3), 50_000)
    assert p.min() >= 1 and p.max() <= 2048 and r.min() >= 1 and r.max() <= 1536
    p2, r2 = PAPER.sample(np.random.default_rng(3), 50_000)
    np.testing.assert_array_equal(p, p2)
    np.testing.assert_array_equal(r, r2)


def test_scaled_profile_keeps_the_shape():
    assert (CPU.prompt_cap, CPU.response_cap) == (512, 384)
    paper, cpu = PAPER.expected_tokens(), CPU.expected_tokens()
    assert cpu["real_fraction_at_caps"] == pytest.approx(paper["real_fraction_at_caps"], rel=0.03)
    assert cpu["response_at_cap_fraction"] == pytest.approx(paper["response_at_cap_fraction"], rel=0.1)


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="cpu"):
        get_profile("nope")
