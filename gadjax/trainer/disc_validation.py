"""D's accuracy on the validation split: (teacher response, student response) pairs of the eval rows.

The training-time d_acc (SPEC.md "Metrics D must log") is measured on the very pairs D is about to train
on, so it cannot tell a D that generalises from one that memorises its batches. At each training-time
evaluation (gadjax.trainer.evaluation) the eval rows, prompts D never trained on, already have a teacher
response and a fresh student response; D scores both, and

    eval/disc_val_accuracy   fraction of pairs with D(x, y_t) > D(x, y_s)   (d_acc's definition)
    eval/disc_val_score_gap  mean of D(x, y_t) - D(x, y_s)

are logged with the other eval/ metrics. Host side only: this module lays the pairs out in the padded
batch layout of the shared contract (gadjax.data.batching) and leaves the scoring to a callable (the
trainer's D forward, gadjax.algo.sequences.sequence_scores).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from gadjax.data.batching import bucket_length, pad_left, pad_right
from gadjax.data.tokenize import RowEncoder

ScoreFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def eval_pairs(
    tokenizer: Any,
    generations: Sequence[Mapping[str, Any]],
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> list[dict[str, Any]]:
    """One pair per evaluated row that has a teacher response: ``{example_id, prompt_ids, teacher_ids,
    student_ids}``. The prompt and the teacher response are tokenized as for training (RowEncoder: chat
    template, an over-long prompt keeps its end, the teacher response gets EOS unless the teacher cut it
    (``teacher_finish_reason`` "length") or it is cut at ``max_response_tokens``); the student response
    is the generated tokens with the stop token that ended them, as a rollout carries it (D scores the
    last valid token)."""
    enc = RowEncoder(tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    pairs = []
    for g in generations:
        if g.get("teacher_response") is None:
            continue
        teacher = {"messages": g["messages"], "response": g["teacher_response"]}
        # As in training (RowEncoder): no EOS after a response the teacher cut at its max_tokens. Without
        # this, every truncated validation teacher response ended in an EOS that no training one has, and
        # D's validation accuracy measured that token instead of what D learned (0.28 in the demo).
        teacher["finish_reason"] = g.get("teacher_finish_reason")
        row = enc.encode_response(enc.encode_prompt(teacher))
        student = list(g["student_token_ids"]) + ([] if g.get("stop_id") is None else [int(g["stop_id"])])
        pairs.append(
            {
                "example_id": g["example_id"],
                "prompt_ids": row["prompt_ids"],
                "teacher_ids": row["response_ids"],
                "student_ids": np.asarray(student, np.int32),
            }
        )
    return pairs


def score_pairs(
    pairs: Sequence[Mapping[str, Any]],
    score_fn: ScoreFn,
    *,
    rows_per_batch: int,
    pad_id: int,
    max_prompt_tokens: int,
    max_response_tokens: int,
    buckets: str = "pow2",
    min_bucket: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(teacher scores, student scores), float32 [pairs], from ``score_fn`` on padded batches of
    ``rows_per_batch`` sequences (prompt LEFT-padded, response RIGHT-padded, both to a length bucket).
    Every batch has the same number of rows (the last is filled with copies of its final sequence, whose
    scores are dropped), so the program compiles once per bucket pair, not once per leftover size."""
    seqs = [(p["prompt_ids"], p[k]) for p in pairs for k in ("teacher_ids", "student_ids")]  # t0 s0 t1 s1 ..
    scores = np.zeros(len(seqs), np.float32)
    for start in range(0, len(seqs), rows_per_batch):
        chunk = seqs[start : start + rows_per_batch]
        full = chunk + [chunk[-1]] * (rows_per_batch - len(chunk))
        p = bucket_length(max(len(s[0]) for s in full), max_prompt_tokens, buckets, min_bucket)
        r = bucket_length(max(len(s[1]) for s in full), max_response_tokens, buckets, min_bucket)
        prompt_ids, prompt_mask = pad_left([s[0] for s in full], p, pad_id)
        response_ids, response_mask = pad_right([s[1] for s in full], r, pad_id)
        batch = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "response_ids": response_ids,
            "response_mask": response_mask,
        }
        out = np.asarray(score_fn(batch), np.float32).reshape(-1)
        scores[start : start + len(chunk)] = out[: len(chunk)]
    return scores[0::2], scores[1::2]


def disc_val_metrics(teacher: np.ndarray, student: np.ndarray) -> dict[str, float | int]:
    """disc_val_accuracy (fraction of pairs with D(t) > D(s), ties count as wrong, as d_acc),
    disc_val_score_gap (mean D(t) - D(s)), their pair count and the two mean scores."""
    t, s = np.asarray(teacher, np.float64), np.asarray(student, np.float64)
    if t.shape != s.shape or not t.size:
        raise ValueError(f"disc_val_metrics: {t.shape} teacher vs {s.shape} student scores")
    return {
        "disc_val_accuracy": float(np.mean(t > s)),
        "disc_val_score_gap": float(np.mean(t - s)),
        "disc_val_pairs": int(t.size),
        "disc_val_teacher_score_mean": float(t.mean()),
        "disc_val_student_score_mean": float(s.mean()),
    }


def disc_validation(
    c: ConfigDict,
    tokenizer: Any,
    mesh: Any,
    generations: list[dict[str, Any]],
    disc_score: ScoreFn,
    batch_size: int,
) -> dict[str, Any]:
    """D's accuracy and score gap on evaluated rows' (teacher, student) pairs (``generations``: the records
    of gadjax.eval.runner.evaluate_model, prompts D never trained on), scored by ``disc_score`` (the
    trainer's D forward) in batches of 2 x ``batch_size`` sequences split over the mesh's batch shards.
    Each generation gets its two scores (d_teacher_score, d_student_score). {} when no row has a teacher
    response. Used by the training-time evaluation and by the study's own evaluation hook."""
    max_new = int(c.eval.max_new_tokens) or int(c.rollout.max_new_tokens)  # as the evaluation generates
    max_response = max(int(c.data.max_response_tokens), max_new)
    pairs = eval_pairs(
        tokenizer,
        generations,
        max_prompt_tokens=int(c.data.max_prompt_tokens),
        max_response_tokens=int(c.data.max_response_tokens),
    )
    if not pairs:
        return {}
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad  # as the data pipeline pads
    teacher, student = score_pairs(
        pairs,
        disc_score,
        rows_per_batch=-(-2 * batch_size // shards) * shards,  # rows split over shards
        pad_id=int(pad),
        max_prompt_tokens=int(c.data.max_prompt_tokens),
        max_response_tokens=max_response,
        buckets=str(c.data.buckets),
        min_bucket=int(c.data.min_bucket),
    )
    scored = iter(zip(teacher.tolist(), student.tolist(), strict=True))  # pairs keep the rows' order
    for g in generations:
        t, s = next(scored) if g.get("teacher_response") is not None else (None, None)
        g["d_teacher_score"], g["d_student_score"] = t, s
    return disc_val_metrics(np.asarray(teacher), np.asarray(student))
