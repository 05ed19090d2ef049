"""Teacher-likeness of a student on the demo persona, as distribution matching (issue 12).

GAD trains the student so that a discriminator cannot tell its responses from the teacher's. The
headline metrics measure exactly that, on responses drawn the SAME way on both sides (sampled at the
teacher's temperature: the teacher corpus was sampled at `demo.teacher_temperature`):

- marker gap: student minus teacher persona-marker rate (gadjax.demo.persona.marker_hit); 0 is best,
  and overshooting the teacher ("more French than the teacher") counts against the student;
- C2ST accuracy: a classifier two-sample test (gadjax.eval.distribution, n-gram logistic regression,
  independent of GAD's discriminator) on student vs teacher responses; 0.5 = indistinguishable.

Each comes with its standard error. Greedy decoding (SPEC.md's protocol for ROUGE-L and the judge) is a
different question and stays in gadjax.demo.evaluation's greedy evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gadjax.demo.persona import marker_hit, persona_messages

# The teacher's view carries the hidden system prompt: a prompt budget that never truncates it away
# (prompts are truncated from the left, which would drop the system message first).
TEACHER_PROMPT_TOKENS = 256


def teacher_resample_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the teacher sees them (hidden persona system prompt), keeping the collected teacher
    response: evaluating the base model on these draws a second, independent teacher sample, the
    calibration row of every table (its C2ST should be ~0.5 and its marker gap ~0)."""
    return [{**dict(r), "messages": persona_messages(list(r["messages"]))} for r in rows]


def likeness_eval(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    temperature: float,
    max_new_tokens: int,
    max_prompt_tokens: int,
    batch_size: int = 16,
    seed: int = 0,
    folds: int = 5,
) -> dict[str, Any]:
    """Sample ``model``'s responses to ``rows`` (dicts with messages + the teacher's response) at
    ``temperature`` and compare them with the teacher's: marker gap and C2ST, each with its SE.
    One response per prompt on each side; the sampling keys derive from ``seed`` only (never from a
    training stream), so an evaluation between training steps changes nothing in the training.
    """
    from gadjax.eval.distribution import marker_gap, two_sample_test
    from gadjax.eval.runner import evaluate_model
    from gadjax.eval.settings import EvalSettings

    settings = EvalSettings(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        temperature=temperature,
        seed=seed,
        two_sample=False,
        progress=False,
    )
    result = evaluate_model(model, tokenizer, rows, settings)
    gens = [g for g in result["generations"] if g["teacher_response"] is not None]
    students = [g["student_response"] for g in gens]
    teachers = [g["teacher_response"] for g in gens]
    lengths = [int(g["length"]) for g in gens]
    truncated = sum(bool(g["truncated"]) for g in gens)
    gap = marker_gap([marker_hit(t) for t in students], [marker_hit(t) for t in teachers])
    c2st = two_sample_test(students, teachers, folds=folds, seed=seed)
    return {
        "decoding": {"temperature": temperature, "top_p": 1.0},
        "n": len(students),
        "marker_rate": gap["student_rate"],
        "teacher_marker_rate": gap["teacher_rate"],
        "marker_gap": gap["gap"],
        "marker_abs_gap": gap["abs_gap"],
        "marker_gap_se": gap["se"],
        "c2st_accuracy": c2st["accuracy"],
        "c2st_se": c2st["se"],
        "c2st_auc": c2st.get("auc"),
        "length_mean": sum(lengths) / max(1, len(lengths)),
        "truncation_rate": truncated / max(1, len(lengths)),
        "examples": [{"student": s, "teacher": t} for s, t in zip(students[:3], teachers[:3], strict=True)],
    }
