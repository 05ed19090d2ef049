"""ROUGE-L F1 against hand-computed LCS values, and against rouge-score's own scorer."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from gadjax.eval.rouge import rouge_l_f1, rouge_l_scores


def f1(lcs: int, n_pred: int, n_ref: int) -> float:
    p, r = lcs / n_pred, lcs / n_ref
    return 0.0 if lcs == 0 else 2 * p * r / (p + r)


# (prediction, reference, LCS length worked out by hand, |pred tokens|, |ref tokens|)
HAND = [
    ("the cat sat on the mat", "the cat sat on the mat", 6, 6, 6),
    ("the cat sat on the mat", "the cat is on the mat", 5, 6, 6),  # the cat on the mat
    ("a b c d e", "e d c b a", 1, 5, 5),  # reversed: any single token
    ("a b c d", "a x b y c z", 3, 4, 6),  # a b c, gaps allowed
    ("police killed the gunman", "the gunman killed police", 2, 4, 4),  # "the gunman" / "police killed"
    ("x y z", "a b c", 0, 3, 3),
    ("The Cat, sat!", "the cat sat", 3, 3, 3),  # lower-cased, punctuation is a separator
    ("b a b a", "a b a b", 3, 4, 4),  # b a b / a b a
]


@pytest.mark.parametrize("pred,ref,lcs,n_pred,n_ref", HAND)
def test_rouge_l_matches_hand_computed_lcs(pred, ref, lcs, n_pred, n_ref):
    assert rouge_l_f1(pred, ref) == pytest.approx(f1(lcs, n_pred, n_ref), abs=1e-12)


def test_rouge_l_is_directional_in_precision_and_recall():
    # Prediction 2 tokens, reference 4, LCS 2: P = 1, R = 0.5, F1 = 2/3 either way round.
    assert rouge_l_f1("a b", "a x b y") == pytest.approx(2 / 3)
    assert rouge_l_f1("a x b y", "a b") == pytest.approx(2 / 3)


def test_empty_and_untokenizable_texts_score_zero():
    assert rouge_l_f1("", "the cat") == 0.0
    assert rouge_l_f1("the cat", "") == 0.0
    assert rouge_l_f1("猫", "猫") == 0.0  # documented caveat of rouge-score's ASCII tokenizer


def _lcs(a: list[str], b: list[str]) -> int:
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def test_agrees_with_rouge_score_and_a_plain_lcs_on_random_texts():
    rng = random.Random(0)
    words = "alpha beta gamma delta eps".split()
    preds = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(30)]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(30)]
    ours = rouge_l_scores(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for p, r, v in zip(preds, refs, ours, strict=True):
        assert v == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure, abs=1e-12)
        assert v == pytest.approx(f1(_lcs(p.split(), r.split()), len(p.split()), len(r.split())), abs=1e-12)


def test_stemmer_option_and_length_mismatch():
    assert rouge_l_f1("cats running", "cat run") == 0.0
    assert rouge_l_scores(["cats running"], ["cat run"], use_stemmer=True) == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        rouge_l_scores(["a"], ["a", "b"])
