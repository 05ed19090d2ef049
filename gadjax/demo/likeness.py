"""Teacher-likeness of a student on the demo persona, as distribution matching (issue 12).

GAD trains the student so that a discriminator cannot tell its responses from the teacher's. The
headline metrics measure exactly that, on responses drawn the SAME way on both sides (sampled at the
teacher's temperature: the teacher corpus was sampled at `demo.teacher_temperature`):

- marker gap: student minus teacher persona-marker rate (gadjax.demo.persona.marker_hit); 0 is best,
  and overshooting the teacher ("more French than the teacher") counts against the student;
- C2ST accuracy: a classifier two-sample test (gadjax.eval.distribution, n-gram logistic regression,
  independent of GAD's discriminator) on student vs teacher responses; 0.5 = indistinguishable.

Each comes with its standard error. With several samples per prompt on each side (the study's
``eval_samples``; issue 27: one sample per prompt left standard errors as large as the effects),
:func:`grouped_likeness` makes prompts the unit: the C2ST is grouped by prompt (its SE clustered by
prompt), the marker gap is a paired difference of per-prompt rates (gadjax.eval.paired), and each comes
with the minimum detectable effect at its standard error. Greedy decoding (SPEC.md's protocol for
ROUGE-L and the judge) is a different question: gadjax.demo.evaluation adds it with --judge.
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
    samples: int = 1,
    teacher_texts: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Sample ``model``'s responses to ``rows`` (dicts with messages + the teacher's response) at
    ``temperature`` and compare them with the teacher's: marker gap and C2ST, each with its SE.
    The sampling keys derive from ``seed`` only (never from a training stream), so an evaluation between
    training steps changes nothing in the training.

    ``samples`` = 1 and no ``teacher_texts``: one response per prompt on each side (the demo). Otherwise
    ``samples`` student responses per prompt (draw j keyed by ``seed + j``) against ``teacher_texts[i]``
    (the teacher's responses to row i; default its one collected response), by prompt:
    :func:`grouped_likeness`.
    """
    if samples > 1 or teacher_texts is not None:
        return _sampled_likeness(
            model, tokenizer, rows, temperature=temperature, max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens, batch_size=batch_size, seed=seed, folds=folds,
            samples=samples, teacher_texts=teacher_texts,
        )  # fmt: skip
    result = sample_responses(
        model, tokenizer, rows, temperature, max_new_tokens, max_prompt_tokens, batch_size, seed
    )
    return likeness_of(result["generations"], temperature=temperature, folds=folds, seed=seed)


def likeness_of(
    generations: Sequence[Mapping[str, Any]], *, temperature: float, folds: int, seed: int
) -> dict[str, Any]:
    """Marker gap and C2ST of already sampled generations (gadjax.eval.runner's records: student_response,
    teacher_response, length, truncated) against their teacher responses, one per prompt on each side."""
    from gadjax.eval.distribution import marker_gap, two_sample_test

    gens = [g for g in generations if g["teacher_response"] is not None]
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


def sample_responses(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    temperature: float,
    max_new_tokens: int,
    max_prompt_tokens: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """One sampled response per row (gadjax.eval.runner.evaluate_model, no metrics beyond lengths)."""
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
    return evaluate_model(model, tokenizer, rows, settings)


def _sampled_likeness(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    temperature: float,
    max_new_tokens: int,
    max_prompt_tokens: int,
    batch_size: int,
    seed: int,
    folds: int,
    samples: int,
    teacher_texts: Sequence[Sequence[str]] | None,
) -> dict[str, Any]:
    """``samples`` draws per prompt (seed + j for draw j) against the teacher's texts, by prompt."""
    keep = [i for i, r in enumerate(rows) if r.get("response") is not None]
    args = (temperature, max_new_tokens, max_prompt_tokens, batch_size)
    draws = [sample_responses(model, tokenizer, rows, *args, seed + j)["generations"] for j in range(samples)]
    students = [[d[i]["student_response"] for d in draws] for i in keep]
    teachers = [list(teacher_texts[i]) if teacher_texts is not None else [rows[i]["response"]] for i in keep]
    gens = [d[i] for d in draws for i in keep]
    res = grouped_likeness(students, teachers, folds=folds)
    res.update(
        decoding={"temperature": temperature, "top_p": 1.0},
        length_mean=sum(int(g["length"]) for g in gens) / max(1, len(gens)),
        truncation_rate=sum(bool(g["truncated"]) for g in gens) / max(1, len(gens)),
        examples=[
            {"student": s[0], "teacher": t[0]} for s, t in zip(students[:3], teachers[:3], strict=True)
        ],
        # The first draw's records (token ids included): the study scores them with D (D's validation
        # accuracy); the caller drops them before saving.
        generations=draws[0],
    )
    return res


def grouped_likeness(
    student: Sequence[Sequence[str]], teacher: Sequence[Sequence[str]], *, folds: int = 5
) -> dict[str, Any]:
    """Teacher-likeness with several texts per prompt: ``student[i]`` and ``teacher[i]`` are prompt i's
    responses (any number >= 1 on each side). Prompts are the unit of every standard error:

    - marker gap = mean over prompts of (student rate - teacher rate) of the prompt, its SE and paired
      t-test p (gadjax.eval.paired.paired_difference), and the minimum detectable effect at that SE;
    - C2ST: gadjax.eval.distribution.grouped_two_sample_test (folds grouped by prompt, SE clustered by
      prompt), with its minimum detectable effect (against chance 0.5).

    ``per_prompt`` keeps the prompts' marker rates, so that two models evaluated on the same prompts can be
    compared prompt by prompt (gadjax.study.report)."""
    from gadjax.eval.distribution import grouped_two_sample_test
    from gadjax.eval.paired import min_detectable_effect, paired_difference

    if len(student) != len(teacher) or not student or not all(map(len, (*student, *teacher))):
        raise ValueError("grouped_likeness: one non-empty list of texts per prompt on each side")
    s_rate = [sum(map(marker_hit, texts)) / len(texts) for texts in student]
    t_rate = [sum(map(marker_hit, texts)) / len(texts) for texts in teacher]
    gap = paired_difference(s_rate, t_rate)
    ids = list(range(len(student)))
    c2st = grouped_two_sample_test(
        [t for texts in student for t in texts],
        [i for i, texts in zip(ids, student, strict=True) for _ in texts],
        [t for texts in teacher for t in texts],
        [i for i, texts in zip(ids, teacher, strict=True) for _ in texts],
        folds=folds,
    )
    n_s, n_t = sum(map(len, student)), sum(map(len, teacher))
    return {
        "n": len(student),
        "samples_student": n_s / len(student),
        "samples_teacher": n_t / len(teacher),
        "marker_rate": float(sum(s_rate) / len(s_rate)),
        "teacher_marker_rate": float(sum(t_rate) / len(t_rate)),
        "marker_gap": gap["diff"],
        "marker_abs_gap": abs(gap["diff"]),
        "marker_gap_se": gap["se"],
        "marker_gap_p": gap["p_value"],
        "marker_gap_mde": min_detectable_effect(gap["se"]),
        "c2st_accuracy": c2st["accuracy"],
        "c2st_se": c2st["se"],
        "c2st_se_binomial": c2st["se_binomial"],
        "c2st_auc": c2st["auc"],
        "c2st_mde": min_detectable_effect(c2st["se"]),
        "per_prompt": {"marker_rate": s_rate, "teacher_marker_rate": t_rate},
    }
