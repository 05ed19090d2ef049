"""``evaluate_model``: student responses on held-out prompts (greedy, or sampled at a temperature),
then every metric of issue 7 and the distribution-matching ones.

In-process API for the trainer and the demo (no reloading): pass the live Decoder (or its
(graphdef, state)), the tokenizer and the rows. ``write_results`` saves what the CLI saves.
Metrics (SPEC.md "Data and evaluation"): ROUGE-L F1 vs the teacher's responses, response length
statistics in student tokens, persona marker rate, and the judge score. Teacher-likeness as
distribution matching (gadjax.eval.distribution / whitebox): the marker-rate gap, the classifier
two-sample test, and, given the teacher's weights, the per-token reverse KL and the teacher NLL.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import Mesh

from gadjax import paths
from gadjax.eval.distribution import marker_gap, two_sample_test
from gadjax.eval.generation import default_stop_ids, generate_responses
from gadjax.eval.judge import JudgeResult, judge_summary, render_question, run_judge
from gadjax.eval.lengths import length_stats
from gadjax.eval.markers import compile_marker, marker_hits, marker_rate
from gadjax.eval.rouge import rouge_l_scores
from gadjax.eval.settings import EvalSettings
from gadjax.parallel.rules import DEFAULT_RULES, Rules


def _row_fields(row: Any, i: int) -> tuple[Any, list[dict[str, str]], str | None, str | None]:
    """(example_id, messages, teacher response or None, the teacher's finish_reason or None) of a record
    dict or a gadjax Row."""
    get = row.get if isinstance(row, Mapping) else (lambda k, d=None: getattr(row, k, d))
    messages = get("messages")
    if not messages:
        raise ValueError(f"row {i}: no 'messages' (expected a chat: list of {{role, content}})")
    finish = get("teacher_finish_reason") or get("finish_reason")
    return get("example_id", i), [dict(m) for m in messages], get("response"), finish


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    settings: EvalSettings,
    *,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    teacher_model: Any = None,
    teacher_system_prompt: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``rows`` (dicts with ``messages`` and optional ``response`` / ``example_id``,
    as from :func:`gadjax.data.sources.open_source`, or :class:`gadjax.data.rows.Row`).

    ``teacher_model`` (a loaded Decoder or its (graphdef, state), sharing the student's tokenizer):
    also compute the white-box reverse KL and teacher NLL (gadjax.eval.whitebox), the teacher seeing
    each conversation with ``teacher_system_prompt`` as its system message. Evaluation only: a real
    black-box teacher has no weights to pass.

    Returns {"settings", "decoding", "counts", "metrics", "summary", "timing_s", "generations"} (see
    gadjax/evaluate.py for the schema).
    """
    t0 = time.perf_counter()
    rows = list(rows)[: settings.max_prompts] if settings.max_prompts else list(rows)
    if not rows:
        raise ValueError("evaluate_model: no rows to evaluate")
    fields = [_row_fields(r, i) for i, r in enumerate(rows)]
    ids = [f[0] for f in fields]
    chats = [f[1] for f in fields]
    teacher = [f[2] for f in fields]

    stop_ids = default_stop_ids(tokenizer, settings.extra_stop_ids)
    gens = generate_responses(
        model,
        tokenizer,
        chats,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        stop_ids=stop_ids,
        mesh=mesh,
        rules=rules,
        seed=settings.seed,
        temperature=settings.temperature,
        top_p=settings.top_p,
        progress=settings.progress,
    )
    t_gen = time.perf_counter() - t0
    student = [g.text for g in gens]
    with_ref = [k for k, t in enumerate(teacher) if t is not None]

    # ROUGE-L: only where the row has a teacher response; the rest are counted, not guessed.
    rouge: list[float | None] = [None] * len(rows)
    for k, v in zip(
        with_ref,
        rouge_l_scores(
            [student[k] for k in with_ref], [teacher[k] for k in with_ref], settings.rouge_stemmer
        ),
        strict=True,
    ):
        rouge[k] = v
    rouge_vals = [v for v in rouge if v is not None]

    teacher_lengths = [len(tokenizer.encode(teacher[k], add_special_tokens=False)) for k in with_ref]
    metrics: dict[str, Any] = {
        "rouge_l": {
            "mean": sum(rouge_vals) / len(rouge_vals) if rouge_vals else None,
            "n": len(rouge_vals),
            "skipped_no_teacher_response": len(rows) - len(rouge_vals),
            "use_stemmer": settings.rouge_stemmer,
        },
        "length": length_stats([g.length for g in gens], [g.truncated for g in gens]),
        "teacher_length": length_stats(teacher_lengths),
        "marker": None,
        "two_sample": None,
        "whitebox": None,
        "judge": None,
    }

    hits: list[bool | None] = [None] * len(rows)
    t_hits: list[bool | None] = [None] * len(rows)
    if settings.marker:
        rx = compile_marker(settings.marker, settings.marker_ignore_case, settings.marker_literal)
        hits = list(marker_hits(student, rx))
        th = marker_hits([teacher[k] for k in with_ref], rx)
        for k, h in zip(with_ref, th, strict=True):
            t_hits[k] = h
        metrics["marker"] = {
            "pattern": settings.marker,
            "literal": settings.marker_literal,
            "ignore_case": settings.marker_ignore_case,
            "student": marker_rate(hits),
            "teacher": marker_rate(th),
            "gap": marker_gap(hits, th),
        }

    t_dist = time.perf_counter()
    if settings.two_sample:
        metrics["two_sample"] = _two_sample(
            [student[k] for k in with_ref], [teacher[k] for k in with_ref], settings
        )
    if teacher_model is not None:
        metrics["whitebox"] = _whitebox(
            model,
            teacher_model,
            tokenizer,
            chats,
            gens,
            teacher,
            settings,
            teacher_system_prompt,
            mesh=mesh,
            rules=rules,
        )
    t_dist = time.perf_counter() - t_dist

    judged: list[JudgeResult | None] = [None] * len(rows)
    teacher_judged: list[JudgeResult | None] = [None] * len(rows)
    metrics["judge_teacher"] = None
    t1 = time.perf_counter()
    if settings.judge is not None:
        results, counters = run_judge(
            chats, student, settings.judge, ids=[str(i) for i in ids], progress=settings.progress
        )
        judged = list(results)
        metrics["judge"] = {
            **judge_summary(results),
            "model": settings.judge.model,
            "base_url": settings.judge.base_url,
            "client": counters,
        }
        if settings.teacher_baseline:
            metrics["judge_teacher"], teacher_judged = _judge_teacher(chats, teacher, ids, results, settings)
    t_judge = time.perf_counter() - t1

    generations = []
    for k, g in enumerate(gens):
        generations.append(
            {
                "index": k,
                "example_id": ids[k],
                "messages": chats[k],
                "prompt": render_question(chats[k]),
                "teacher_response": teacher[k],
                # Why the teacher's text ended ("length": cut at its max_tokens): D's validation pairs
                # encode it as training does (EOS only after a response that ended on its own).
                "teacher_finish_reason": fields[k][3],
                "student_response": g.text,
                "student_token_ids": g.token_ids,
                "stop_id": g.stop_id,
                "length": g.length,
                "truncated": g.truncated,
                "prompt_tokens": g.prompt_tokens,
                "prompt_truncated": g.prompt_truncated,
                "rouge_l": rouge[k],
                "marker_hit": hits[k],
                "teacher_marker_hit": t_hits[k],
                "judge": judged[k].as_dict() if judged[k] is not None else None,
                "teacher_judge": teacher_judged[k].as_dict() if teacher_judged[k] is not None else None,
            }
        )

    counts = {
        "prompts": len(rows),
        "with_teacher_response": len(with_ref),
        "prompt_truncated": sum(g.prompt_truncated for g in gens),
        "response_truncated": sum(g.truncated for g in gens),
        "judge_ok": metrics["judge"]["n_ok"] if metrics["judge"] else None,
        "judge_failed": metrics["judge"]["n_failed"] if metrics["judge"] else None,
    }
    return {
        "settings": {**settings.describe(), "stop_ids": sorted(stop_ids)},
        "decoding": settings.decoding(),
        "counts": counts,
        "metrics": metrics,
        "summary": summarize(metrics, len(rows)),
        "timing_s": {
            "generation": round(t_gen, 3),
            "distribution": round(t_dist, 3),
            "judge": round(t_judge, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
        "generations": generations,
    }


def _judge_teacher(
    chats: list[Any],
    teacher: list[str | None],
    ids: list[Any],
    student_results: list[JudgeResult],
    settings: EvalSettings,
) -> tuple[dict[str, Any], list[JudgeResult | None]]:
    """The teacher baseline row: the judge rates each row's teacher response against the reference
    answer the student was rated against (the same protocol and references: a paired comparison).
    Rows without a teacher response are counted, not judged."""
    rows = [k for k, t in enumerate(teacher) if t is not None]
    results, counters = run_judge(
        [chats[k] for k in rows],
        [teacher[k] for k in rows],
        settings.judge,
        ids=[f"{ids[k]}:teacher" for k in rows],
        progress=settings.progress,
        references=[student_results[k].reference if student_results[k].failure != "reference_error" else None
                    for k in rows],
    )  # fmt: skip
    per_row: list[JudgeResult | None] = [None] * len(teacher)
    for k, r in zip(rows, results, strict=True):
        per_row[k] = r
    # Student minus teacher on the rows both were scored on, x100 like the scores.
    diffs = [
        100.0 * (student_results[k].score - r.score)
        for k, r in zip(rows, results, strict=True)
        if r.failure is None and student_results[k].failure is None
    ]
    mean = sum(diffs) / len(diffs) if diffs else None
    se = None
    if len(diffs) > 1:
        var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        se = (var / len(diffs)) ** 0.5
    summary = {
        **judge_summary(results),
        "skipped_no_teacher_response": len(teacher) - len(rows),
        "student_minus_teacher": {"mean": mean, "se": se, "n": len(diffs)},
        "client": counters,
    }
    return summary, per_row


def _two_sample(student: list[str], teacher: list[str], settings: EvalSettings) -> dict[str, Any]:
    """C2ST on the rows that have a teacher response (same prompts on both sides), or why it was not run."""
    folds = settings.two_sample_folds
    if len(teacher) < 2 * folds:
        return {
            "skipped": f"{len(teacher)} rows with a teacher response; the {folds}-fold test needs "
            f">= {2 * folds}"
        }
    return {**two_sample_test(student, teacher, folds=folds, seed=settings.seed), "skipped": None}


def _whitebox(
    model: Any,
    teacher_model: Any,
    tokenizer: Any,
    chats: list[list[dict[str, str]]],
    gens: list[Any],
    teacher: list[str | None],
    settings: EvalSettings,
    teacher_system_prompt: str | None,
    *,
    mesh: Mesh | None,
    rules: Rules,
) -> dict[str, Any]:
    """Reverse KL / teacher NLL at the sampling temperature (T=1 for greedy samples, and said so)."""
    from gadjax.eval.whitebox import token_metrics  # jax forward passes: only when a teacher is given

    temperature = settings.temperature if not settings.greedy else 1.0
    res = token_metrics(
        model,
        teacher_model,
        tokenizer,
        chats,
        [g.token_ids for g in gens],
        teacher,
        student_stop_ids=[g.stop_id for g in gens],
        teacher_system_prompt=teacher_system_prompt,
        temperature=temperature,
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_response_tokens=settings.max_new_tokens,  # as the student's: stop token included
        mesh=mesh,
        rules=rules,
    )
    notes = []
    if settings.greedy:
        notes.append(
            "student responses are greedy, not samples: reverse_kl is the mean log-ratio at T=1 on "
            "greedy outputs, NOT an estimate of KL(student || teacher); sample (temperature > 0) for that"
        )
    elif settings.top_p < 1.0:
        notes.append(
            f"samples drawn with top_p={settings.top_p}: they do not come from softmax(logits / T), so "
            "reverse_kl is biased as a KL estimate"
        )
    res["note"] = "; ".join(notes) or None
    for k in ("reverse_kl", "teacher_nll"):
        res[k] = {kk: v for kk, v in res[k].items() if kk != "per_prompt"}
    return res


def summarize(metrics: Mapping[str, Any], n_prompts: int) -> dict[str, float | int | None]:
    """Flat headline numbers (None where a metric was not computed), for tables and bar plots."""
    marker, judge, length = metrics.get("marker"), metrics.get("judge"), metrics["length"]
    teacher_judge = metrics.get("judge_teacher")
    gap = (marker or {}).get("gap") or {}
    c2st = metrics.get("two_sample") or {}
    wb = metrics.get("whitebox") or {}
    kl, nll = wb.get("reverse_kl") or {}, wb.get("teacher_nll") or {}
    return {
        "n_prompts": n_prompts,
        "rouge_l": metrics["rouge_l"]["mean"],
        "length_mean": length["mean"],
        "length_median": length["median"],
        "length_p90": length["p90"],
        "length_max": length["max"],
        "truncation_rate": length["truncation_rate"],
        "teacher_length_mean": metrics["teacher_length"]["mean"],
        "marker_rate": marker["student"]["rate"] if marker else None,
        "teacher_marker_rate": marker["teacher"]["rate"] if marker else None,
        "marker_gap": gap.get("gap"),
        "marker_gap_se": gap.get("se"),
        "marker_abs_gap": gap.get("abs_gap"),
        "c2st_accuracy": c2st.get("accuracy"),
        "c2st_se": c2st.get("se"),
        "reverse_kl": kl.get("mean"),
        "reverse_kl_se": kl.get("se"),
        "teacher_nll": nll.get("mean"),
        "teacher_nll_se": nll.get("se"),
        "judge_score": judge["score"] if judge else None,
        "judge_n_ok": judge["n_ok"] if judge else None,
        "judge_n_failed": judge["n_failed"] if judge else None,
        "teacher_judge_score": teacher_judge["score"] if teacher_judge else None,
        "judge_minus_teacher": teacher_judge["student_minus_teacher"]["mean"] if teacher_judge else None,
        "judge_minus_teacher_se": teacher_judge["student_minus_teacher"]["se"] if teacher_judge else None,
    }


def write_results(
    result: Mapping[str, Any], out_dir: str, name: str, info: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """Write ``eval_<name>.json`` (everything but the generations, plus ``name`` and ``info`` such as
    the model path) and ``generations_<name>.jsonl`` (one line per prompt), each whole or not at all;
    ``out_dir`` may be local or gs://. Returns both paths."""
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"evaluation name {name!r}: must be a plain file-name label")
    paths.makedirs(out_dir)
    eval_path = paths.join(out_dir, f"eval_{name}.json")
    gen_path = paths.join(out_dir, f"generations_{name}.jsonl")
    doc = {"name": name, **dict(info or {}), **{k: v for k, v in result.items() if k != "generations"}}
    lines = [json.dumps(g, ensure_ascii=False) + "\n" for g in result["generations"]]
    paths.write_text(gen_path, "".join(lines))
    paths.write_text(eval_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return eval_path, gen_path


def format_summary(result: Mapping[str, Any], name: str) -> str:
    """A few human lines: the headline numbers with their counts."""
    s, m = result["summary"], result["metrics"]

    def f(x: float | None, spec: str = ".3f") -> str:
        return "n/a" if x is None else format(x, spec)

    d = result.get("decoding") or {}
    how = "greedy" if d.get("greedy", True) else f"sampled T={d['temperature']:g} top_p={d['top_p']:g}"
    lines = [f"eval {name}: {s['n_prompts']} prompts ({how})"]
    lines.append(f"  ROUGE-L F1      {f(s['rouge_l'])}  (n={m['rouge_l']['n']})")
    lines.append(
        f"  length (tokens) mean {f(s['length_mean'], '.1f')}  median "
        f"{f(s['length_median'], '.1f')}  p90 {f(s['length_p90'], '.1f')}  max {s['length_max']}  "
        f"truncated {f(s['truncation_rate'], '.1%')}  (teacher mean "
        f"{f(s['teacher_length_mean'], '.1f')})"
    )
    if m["marker"]:
        st, te = m["marker"]["student"], m["marker"]["teacher"]
        lines.append(
            f"  marker rate     {f(st['rate'], '.1%')} ({st['hits']}/{st['n']}); "
            f"teacher {f(te['rate'], '.1%')} ({te['hits']}/{te['n']}); gap "
            f"{f(s['marker_gap'], '+.3f')} +/- {f(s['marker_gap_se'])}"
        )
    c2 = m.get("two_sample")
    if c2 and c2.get("skipped"):
        lines.append(f"  two-sample test skipped: {c2['skipped']}")
    elif c2:
        lines.append(
            f"  two-sample test accuracy {f(s['c2st_accuracy'])} +/- {f(s['c2st_se'])}  (0.5 = "
            f"indistinguishable; AUC {f(c2['auc'])}, p {c2['p_value']:.2g}, "
            f"n {c2['n_student']}+{c2['n_teacher']})"
        )
    wb = m.get("whitebox")
    if wb:
        lines.append(
            f"  reverse KL/token {f(s['reverse_kl'], '.4f')} +/- {f(s['reverse_kl_se'], '.4f')} (T="
            f"{wb['temperature']:g}); teacher NLL/token {f(s['teacher_nll'])} +/- {f(s['teacher_nll_se'])}"
        )
        if wb.get("note"):
            lines.append(f"    note: {wb['note']}")
    if m["judge"]:
        j = m["judge"]
        failed = ", ".join(f"{k} {v}" for k, v in j["failures"].items() if v) or "none"
        lines.append(
            f"  judge score     {f(s['judge_score'], '.2f')}  (50 = parity; ok "
            f"{j['n_ok']}/{j['n']}, failed: {failed})"
        )
    if m.get("judge_teacher"):
        t = m["judge_teacher"]
        lines.append(
            f"  teacher score   {f(s['teacher_judge_score'], '.2f')}  (the corpus's answers, same judge and "
            f"references; ok {t['n_ok']}/{t['n']}); student - teacher {f(s['judge_minus_teacher'], '+.2f')}"
            f" +/- {f(s['judge_minus_teacher_se'], '.2f')} (paired, n={t['student_minus_teacher']['n']})"
        )
    return "\n".join(lines)
