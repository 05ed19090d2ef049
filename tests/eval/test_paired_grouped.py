"""Issue 27's statistics: the grouped multi-sample C2ST (folds by prompt) and the paired comparisons by
prompt, against references computed here independently (binomial sums with math.comb, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, ttest_rel

from gadjax.eval.distribution import grouped_two_sample_test
from gadjax.eval.paired import mcnemar, min_detectable_effect, paired_difference

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def _texts(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    return [" ".join(rng.choice(vocab, size=8)) for _ in range(n)]


def test_grouped_c2st_is_chance_on_one_distribution_and_perfect_on_separable_texts():
    rng = np.random.default_rng(0)
    prompts, k = 30, 4  # 4 samples per prompt on each side
    groups = [p for p in range(prompts) for _ in range(k)]
    same = grouped_two_sample_test(
        _texts(rng, WORDS, prompts * k), groups, _texts(rng, WORDS, prompts * k), groups, folds=5
    )
    assert abs(same["accuracy"] - 0.5) < 0.1, same
    assert same["n_prompts"] == prompts and same["se"] > 0
    french = "le la les est une des du et pour qui que dans pas sont avec".split()
    sep = grouped_two_sample_test(
        _texts(rng, WORDS, prompts * k), groups, _texts(rng, french, prompts * k), groups, folds=5
    )
    assert sep["accuracy"] > 0.97 and sep["auc"] > 0.99, sep
    with pytest.raises(ValueError, match="prompts"):
        grouped_two_sample_test(["a"] * 4, [0, 0, 1, 1], ["b"] * 4, [0, 0, 1, 1], folds=5)


def _exact_two_sided(k: int, m: int) -> tuple[float, float]:
    """Exact McNemar p (sum of Binomial(m, 1/2) probabilities no larger than the observed one) and mid-p."""
    pmf = [math.comb(m, i) / 2**m for i in range(m + 1)]
    p = min(1.0, sum(q for q in pmf if q <= pmf[k] * (1 + 1e-12)))
    lo = min(k, m - k)
    mid = min(1.0, 2 * (sum(pmf[: lo + 1]) - 0.5 * pmf[lo]))
    return p, mid


@pytest.mark.parametrize("n10,n01,same", [(12, 3, 20), (5, 5, 7), (0, 6, 1), (40, 25, 100)])
def test_mcnemar_matches_the_binomial_sum(n10, n01, same):
    a = [True] * n10 + [False] * n01 + [True] * same + [False] * same
    b = [False] * n10 + [True] * n01 + [True] * same + [False] * same
    res = mcnemar(a, b)
    p, mid = _exact_two_sided(n01, n10 + n01)
    assert res["n_a_only"] == n10 and res["n_b_only"] == n01
    assert res["p_value"] == pytest.approx(p, rel=1e-9)
    assert res["mid_p"] == pytest.approx(mid, rel=1e-9) and res["mid_p"] <= res["p_value"]
    assert res["diff"] == pytest.approx((n10 - n01) / len(a))


def test_paired_difference_matches_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    a = rng.random(20)
    b = a - 0.1 + 0.05 * rng.standard_normal(20)
    res = paired_difference(a, b)
    d = a - b
    assert res["diff"] == pytest.approx(d.mean())
    assert res["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(20))
    assert res["p_value"] == pytest.approx(ttest_rel(a, b).pvalue)


def test_min_detectable_effect_has_the_stated_power():
    se, alpha = 0.046, 0.05
    mde = min_detectable_effect(se, alpha, 0.8)
    z = norm.ppf(1 - alpha / 2)
    power = norm.sf(z - mde / se) + norm.cdf(-z - mde / se)  # a two-sided z-test at the true effect mde
    assert power == pytest.approx(0.8, abs=1e-3)
    assert mde == pytest.approx(2.8 * se, rel=0.01)
