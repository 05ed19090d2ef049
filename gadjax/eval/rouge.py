"""ROUGE-L F1 of student responses against the teacher's (SPEC.md: the training-time sanity signal).

Thin wrapper over the ``rouge-score`` package (Google's reference implementation): ROUGE-L on the
whole text (``rougeL``, one LCS over the token sequence, not the per-sentence ``rougeLsum``), F1 =
2PR / (P + R) with P = LCS / |student tokens| and R = LCS / |teacher tokens|.

Caveat, from rouge-score's default tokenizer: text is lower-cased and everything outside ``[a-z0-9]``
is a separator, so text with no ASCII letters or digits (e.g. Chinese) has no tokens and scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score import rouge_scorer


def make_scorer(use_stemmer: bool = False) -> rouge_scorer.RougeScorer:
    """A ROUGE-L scorer; ``use_stemmer`` applies the Porter stemmer to both sides."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_f1(prediction: str, reference: str, scorer: rouge_scorer.RougeScorer | None = None) -> float:
    """ROUGE-L F1 of one prediction against one reference (0.0 when either side has no tokens)."""
    scorer = scorer or make_scorer()
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)  # score(target, prediction)


def rouge_l_scores(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False
) -> list[float]:
    """Per-item ROUGE-L F1; the two sequences must have the same length."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l_scores: {len(predictions)} predictions but {len(references)} references")
    scorer = make_scorer(use_stemmer)
    return [rouge_l_f1(p, r, scorer) for p, r in zip(predictions, references, strict=True)]
