"""Teacher-likeness as distribution matching: how far the student's SAMPLE of texts is from the
teacher's, each number with its standard error.

GAD's goal is a student whose responses are distributed like the teacher's, which a per-item score
(ROUGE-L, the judge) does not measure. Two host-side measures of two samples of texts live here (no
model code, no jax):

- :func:`marker_gap`: the difference of two rates of a marker (e.g. a persona's sign-off), with the
  standard error of a difference of independent proportions.
- :func:`two_sample_test`: a classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): a TF-IDF +
  logistic-regression classifier is trained to tell student texts from teacher texts, and its held-out
  accuracy is reported. 0.5 = the classifier cannot tell them apart (indistinguishable to this
  feature set); 1.0 = fully separable. Features are word 1-2 grams and within-word character 2-4
  grams; the vectorizer is fit inside each training fold only (a sklearn Pipeline), so no vocabulary or
  IDF statistics leak from the held-out texts.

The white-box diagnostics that need both models' weights are in :mod:`gadjax.eval.whitebox`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Appended to every text before vectorizing: a constant token (and its character n-grams), so an
# empty text is a valid document (a TfidfVectorizer fit on empty documents only raises "empty
# vocabulary") and is represented by that constant feature alone.
_DOC_SENTINEL = " qzxdocqzx"


def _preprocess(text: str) -> str:
    """Lower-case (a custom preprocessor replaces sklearn's own lower-casing) + the constant token."""
    return text.lower() + _DOC_SENTINEL


def marker_gap(student_hits: Sequence[bool], teacher_hits: Sequence[bool]) -> dict[str, float | int | None]:
    """Student marker rate minus the teacher's, with the standard error of the difference of two
    independent proportions: sqrt(p_s(1-p_s)/n_s + p_t(1-p_t)/n_t). All rates are None when either
    sample is empty."""
    s = np.asarray([bool(h) for h in student_hits], dtype=np.float64)
    t = np.asarray([bool(h) for h in teacher_hits], dtype=np.float64)
    out: dict[str, float | int | None] = {"n_student": int(s.size), "n_teacher": int(t.size)}
    if s.size == 0 or t.size == 0:
        return {**out, "student_rate": None, "teacher_rate": None, "gap": None, "abs_gap": None, "se": None}
    ps, pt = float(s.mean()), float(t.mean())
    gap = ps - pt
    se = math.sqrt(ps * (1 - ps) / s.size + pt * (1 - pt) / t.size)
    return {**out, "student_rate": ps, "teacher_rate": pt, "gap": gap, "abs_gap": abs(gap), "se": se}


def _balanced_subset(n_given: int, n_keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (in data order) of a seeded random subset of n_keep of range(n_given)."""
    if n_keep >= n_given:
        return np.arange(n_given)
    return np.sort(rng.choice(n_given, size=n_keep, replace=False))


def make_c2st_pipeline(c: float = 1.0, max_iter: int = 1000) -> Any:
    """The C2ST classifier: TF-IDF (word 1-2 grams + char_wb 2-4 grams) -> logistic regression, as one
    Pipeline so that cross-validation refits the vectorizers on each training fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), preprocessor=_preprocess)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), preprocessor=_preprocess)),
        ]
    )
    return Pipeline([("tfidf", features), ("clf", LogisticRegression(C=c, max_iter=max_iter))])


def two_sample_test(
    student_texts: Sequence[str], teacher_texts: Sequence[str], *, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Classifier two-sample test: can a TF-IDF + logistic-regression classifier tell student texts from
    teacher texts on held-out data? (See the module docstring.)

    Classes are balanced first: the larger sample is reduced to the size n of the smaller one by a
    seeded random subset (``balanced`` in the result says which sample and from how many), so chance
    accuracy is exactly 0.5. Stratified K-fold (shuffled with ``seed``); every text is predicted once,
    by the model that did not train on it.

    Returns {accuracy (over all 2n held-out predictions), se (binomial, sqrt(acc(1-acc)/2n)), auc (ROC
    AUC of the pooled out-of-fold decision scores), p_value (one-sided binomial test of the number of
    correct predictions against 0.5; approximate, since the folds' predictions are not independent),
    n_student, n_teacher (used), folds, seed, balanced, chance, features}.

    Raises ValueError with fewer than 2 x ``folds`` texts in either sample (after balancing).
    """
    from scipy.stats import binomtest
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"two_sample_test: folds={folds}, need >= 2")
    n_s_given, n_t_given = len(student_texts), len(teacher_texts)
    n = min(n_s_given, n_t_given)
    if n < 2 * folds:
        raise ValueError(
            f"two_sample_test: {n_s_given} student and {n_t_given} teacher texts; need >= {2 * folds} "
            f"of each for {folds} folds"
        )
    rng = np.random.default_rng(seed)
    s_idx = _balanced_subset(n_s_given, n, rng)
    t_idx = _balanced_subset(n_t_given, n, rng)
    texts = [str(student_texts[i]) for i in s_idx] + [str(teacher_texts[i]) for i in t_idx]
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])  # 1 = student, 0 = teacher
    scores = np.zeros(2 * n, np.float64)
    pred = np.zeros(2 * n, np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in skf.split(np.zeros(2 * n), y):
        pipe = make_c2st_pipeline()
        pipe.fit([texts[i] for i in train], y[train])
        held = [texts[i] for i in test]
        scores[test] = pipe.decision_function(held)
        pred[test] = pipe.predict(held)
    correct = int((pred == y).sum())
    total = 2 * n
    acc = correct / total
    dropped_from = "student" if n_s_given > n else "teacher" if n_t_given > n else None
    return {
        "accuracy": acc,
        "se": math.sqrt(acc * (1 - acc) / total),
        "auc": float(roc_auc_score(y, scores)),
        "p_value": float(binomtest(correct, total, 0.5, alternative="greater").pvalue),
        "n_correct": correct,
        "n_student": n,
        "n_teacher": n,
        "folds": folds,
        "seed": seed,
        "balanced": {
            "student_given": n_s_given,
            "teacher_given": n_t_given,
            "subsampled": dropped_from,
            "rule": "the larger sample reduced to the smaller's size by a seeded random subset",
        },
        "chance": 0.5,
        "features": "tf-idf word 1-2 grams + char_wb 2-4 grams (fit per training fold), "
        "logistic regression C=1.0",
    }


def grouped_two_sample_test(
    student_texts: Sequence[str],
    student_groups: Sequence[Any],
    teacher_texts: Sequence[str],
    teacher_groups: Sequence[Any],
    *,
    folds: int = 5,
) -> dict[str, Any]:
    """C2ST with several samples per prompt on each side (issue 27: one sample per prompt left a standard
    error as large as the effects). Folds are grouped by prompt (sklearn GroupKFold): every sample of a
    prompt, student and teacher alike, is held out together, so the classifier never scores a text whose
    prompt it trained on (the prompt's topic would otherwise leak into the accuracy).

    The standard error is the cluster (by prompt) one: predictions of one prompt are correlated, so the
    accuracy is a mean of per-prompt accuracies and its SE is their std (ddof 1) / sqrt(prompts), not the
    binomial SE over all texts. Returns {accuracy, se, se_binomial (the naive one, for comparison), auc,
    n_prompts, n_student, n_teacher, folds, chance}.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if len(student_texts) != len(student_groups) or len(teacher_texts) != len(teacher_groups):
        raise ValueError("grouped_two_sample_test: each text needs its group (prompt id)")
    texts = [str(t) for t in student_texts] + [str(t) for t in teacher_texts]
    y = np.concatenate([np.ones(len(student_texts), np.int64), np.zeros(len(teacher_texts), np.int64)])
    groups = np.asarray([str(g) for g in (*student_groups, *teacher_groups)])
    uniq = np.unique(groups)
    if len(uniq) < folds or min(len(student_texts), len(teacher_texts)) < folds:
        raise ValueError(f"grouped_two_sample_test: {len(uniq)} prompts; need >= {folds} for {folds} folds")
    scores = np.zeros(len(texts), np.float64)
    pred = np.zeros(len(texts), np.int64)
    for train, test in GroupKFold(n_splits=folds).split(np.zeros(len(texts)), y, groups):
        if len(np.unique(y[train])) < 2:
            raise ValueError("grouped_two_sample_test: a training fold holds one class only")
        pipe = make_c2st_pipeline()
        pipe.fit([texts[i] for i in train], y[train])
        held = [texts[i] for i in test]
        scores[test] = pipe.decision_function(held)
        pred[test] = pipe.predict(held)
    # Class-balanced accuracy (mean of the two classes' recalls): chance is 0.5 even when the sides hold
    # different numbers of samples. Per prompt the same weighting, for the cluster SE.
    correct = (pred == y).astype(np.float64)
    w = np.where(y == 1, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((1 - y).sum())))
    acc = float((w * correct).sum())
    per_prompt = np.array([correct[groups == g].mean() for g in uniq])
    se = float(per_prompt.std(ddof=1) / math.sqrt(len(uniq))) if len(uniq) > 1 else float("nan")
    return {
        "accuracy": acc,
        "se": se,
        "se_binomial": math.sqrt(acc * (1 - acc) / len(texts)),
        "auc": float(roc_auc_score(y, scores)),
        "n_prompts": int(len(uniq)),
        "n_student": len(student_texts),
        "n_teacher": len(teacher_texts),
        "folds": folds,
        "chance": 0.5,
    }
