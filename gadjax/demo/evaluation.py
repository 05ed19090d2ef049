"""Evaluation of the demo's models: held-out metrics on sampled responses with the persona marker
(``evaluate``), teacher-likeness (``likeness``, gadjax.demo.likeness) and the SPEC.md judge protocol
(``judge_all``).
"""

from __future__ import annotations

import os
from typing import Any

from gadjax.demo.timing import say

LIKENESS_SEED = 1234  # evaluation keys: never a training stream


def evaluate(
    name: str,
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    demo: Any,
    out: str,
    info: dict[str, Any],
    max_prompt_tokens: int = 64,
    greedy: bool = False,
) -> dict[str, Any]:
    """Held-out responses sampled at the teacher's temperature: teacher-likeness (marker gap and C2ST,
    ``likeness_of``), and, on the same texts, ROUGE-L, lengths (gadjax.eval) and the persona marker
    (persona.py). ``greedy`` (the demo's --judge: SPEC.md judges greedy answers) adds a greedy pass that
    then carries ROUGE-L, lengths, the marker rate and the judged answers; without it one sampled pass
    serves every metric (issue 27: the greedy pass was a third of each evaluation's time). Written to
    <out>/eval_<name>.json and generations_<name>.jsonl (rewritten after judging)."""
    from gadjax.demo.likeness import likeness_of, sample_responses
    from gadjax.demo.persona import MARKER_REGEX, marker_hit
    from gadjax.eval.runner import evaluate_model, write_results
    from gadjax.eval.settings import EvalSettings

    temperature = float(demo.teacher_temperature)
    sampled = sample_responses(
        model, tokenizer, rows, temperature, int(demo.teacher_max_tokens), max_prompt_tokens,
        int(demo.eval_batch_size), LIKENESS_SEED,
    )  # fmt: skip
    lk = likeness_of(sampled["generations"], temperature=temperature, folds=_folds(rows), seed=LIKENESS_SEED)
    result = sampled
    if greedy:
        settings = EvalSettings(
            max_new_tokens=int(demo.teacher_max_tokens),
            batch_size=int(demo.eval_batch_size),
            max_prompt_tokens=max_prompt_tokens,
            two_sample=False,  # greedy vs the sampled teacher is not like with like: the C2ST is lk's
            progress=True,
        )
        result = evaluate_model(model, tokenizer, rows, settings)
    result["metrics"]["likeness"] = lk
    for key in ("marker_gap", "marker_gap_se", "c2st_accuracy", "c2st_se"):
        result["summary"][key] = lk[key]
    result["summary"]["sampled_marker_rate"] = lk["marker_rate"]
    result["summary"]["decoding_of_rows"] = "greedy" if greedy else f"sampled, T={temperature}"
    gens = result["generations"]
    hits = [marker_hit(g["student_response"]) for g in gens]
    t_hits = [marker_hit(g["teacher_response"]) if g["teacher_response"] else None for g in gens]
    for g, h, th in zip(gens, hits, t_hits, strict=True):
        g["marker_hit"], g["teacher_marker_hit"] = h, th
    t_known = [h for h in t_hits if h is not None]
    result["metrics"]["marker"] = {
        "pattern": "gadjax.demo.persona.marker_hit (French function words vs English ones)",
        "french_words": MARKER_REGEX.pattern,
        "student": {"hits": sum(hits), "n": len(hits), "rate": sum(hits) / len(hits)},
        "teacher": {"hits": sum(t_known), "n": len(t_known), "rate": sum(t_known) / max(1, len(t_known))},
    }
    result["summary"]["marker_rate"] = sum(hits) / len(hits)
    result["summary"]["teacher_marker_rate"] = sum(t_known) / max(1, len(t_known))
    write_results(result, out, name, info)
    s = result["summary"]
    say(
        f"eval {name} ({s['decoding_of_rows']}): marker {s['marker_rate']:.2f}, ROUGE-L {s['rouge_l']:.3f}, "
        f"length {s['length_mean']:.1f} tokens ({result['timing_s']['generation']:.1f} s), "
        f"marker gap {s['marker_gap']:+.2f}, C2ST {s['c2st_accuracy']:.2f}"
    )
    return result


def likeness(model: Any, tokenizer: Any, rows: list[dict], demo: Any, max_prompt_tokens: int) -> dict:
    """Teacher-likeness (gadjax.demo.likeness): responses sampled at the teacher's temperature, marker gap
    and C2ST against the teacher's responses; the result's headline numbers go into the summary."""
    from gadjax.demo.likeness import likeness_eval

    return likeness_eval(
        model,
        tokenizer,
        rows,
        temperature=float(demo.teacher_temperature),
        max_new_tokens=int(demo.teacher_max_tokens),
        max_prompt_tokens=max_prompt_tokens,
        batch_size=int(demo.eval_batch_size),
        seed=LIKENESS_SEED,
        folds=_folds(rows),
    )


def _folds(rows: list[dict]) -> int:
    return 2 if len(rows) < 20 else 5


def judge_all(
    evals: dict[str, dict], teacher_rows: list[dict], k: int, url: str, demo: Any, out: str
) -> dict[str, Any]:
    """SPEC.md judge protocol on the first k held-out prompts for every evaluated model and for the
    teacher's own responses; the judge's reference answers are cached once for all of them."""
    from gadjax.eval.judge import JudgeSettings, judge_summary, run_judge

    settings = JudgeSettings(
        base_url=url,
        model="judge",
        api_key_env=None,
        temperature=0.0,
        reference_max_tokens=int(demo.judge_reference_max_tokens),
        rating_max_tokens=int(demo.judge_rating_max_tokens),
        concurrency=16,
        timeout_s=600.0,
        max_retries=1,
        cache_path=os.path.join(out, "judge_cache.sqlite"),
    )
    chats = [r["messages"] for r in teacher_rows[:k]]
    ids = [str(i) for i in range(len(chats))]
    answers = {name: [g["student_response"] for g in res["generations"][:k]] for name, res in evals.items()}
    answers["teacher"] = [r["response"] for r in teacher_rows[:k]]
    summaries = {}
    for name, texts in answers.items():
        results, counters = run_judge(chats, texts, settings, ids=ids, progress=True)
        js = {**judge_summary(results), "model": settings.model, "prompts": len(chats), "client": counters}
        summaries[name] = js
        if name in evals:
            res = evals[name]
            res["metrics"]["judge"] = js
            res["summary"].update(
                judge_score=js["score"], judge_n_ok=js["n_ok"], judge_n_failed=js["n_failed"]
            )
            res["counts"].update(judge_ok=js["n_ok"], judge_failed=js["n_failed"])
            for g, r in zip(res["generations"], results, strict=False):
                g["judge"] = r.as_dict()
        score = "n/a" if js["score"] is None else f"{js['score']:.1f}"
        say(f"judge {name}: score {score} (ok {js['n_ok']}/{js['n']}, failures {js['failures']})")
    return summaries
