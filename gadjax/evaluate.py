"""Evaluate any student checkpoint: ``python -m gadjax.evaluate --model PATH --data FILE.jsonl ...``.

Responses of the model (a HF directory or a .gguf file) to the held-out prompts, greedy (SPEC.md, the
default) or sampled (``--temperature T [--top-p P] [--seed S]``, to compare like with like against
teacher responses that were themselves sampled), then (SPEC.md "Data and evaluation", issue 7): ROUGE-L
F1 vs the teacher's responses (rouge-score), response length statistics in student tokens, persona
marker rate (``--marker``), and the judge protocol against any OpenAI-compatible chat URL
(``--judge-url``). Teacher-likeness as distribution matching: the marker-rate gap with its standard
error, a classifier two-sample test of student vs teacher texts (``--no-two-sample`` skips it), and,
with the teacher's weights (``--teacher-model``, evaluation only), the per-token reverse KL on the
student's samples and the student's NLL of the teacher's responses. In-process use:
:func:`evaluate_model`.

Writes, in ``--out``:

``eval_<name>.json``::

    name, model, tokenizer, data           what was evaluated
    settings     every EvalSettings field (judge settings incl. the API-key variable NAME, never the
                 key), stop_ids
    decoding     {greedy, temperature, top_p, seed}   how the student's responses were drawn
    counts       prompts, with_teacher_response, prompt_truncated, response_truncated, judge_ok,
                 judge_failed (null without a judge)
    metrics
      rouge_l        {mean, n, skipped_no_teacher_response, use_stemmer}
      length         {n, mean, median, p90, min, max, truncated, truncation_rate}   student tokens,
                     stop token excluded
      teacher_length {n, mean, median, p90, min, max}   teacher responses re-tokenized by the student
      marker         null | {pattern, literal, ignore_case, student: {hits, n, rate},
                             teacher: {hits, n, rate},
                             gap: {student_rate, teacher_rate, gap (student - teacher), abs_gap, se,
                                   n_student, n_teacher}}   se of two independent proportions
      two_sample     null (--no-two-sample) | {skipped: reason} | classifier two-sample test on the rows
                     with a teacher response: {accuracy (held-out, 0.5 = indistinguishable, 1.0 =
                     separable), se, auc, p_value (one-sided binomial vs 0.5), n_correct, n_student,
                     n_teacher, folds, seed, balanced, chance, features, skipped: null}
      whitebox       null (no --teacher-model) | {temperature, teacher_system_prompt (bool), note,
                     reverse_kl: {mean, se, n_prompts, n_tokens, skipped_empty},
                     teacher_nll: {mean, se, n_prompts, n_tokens, truncated, temperature}}
                     per-prompt token means, then mean and se over prompts; reverse_kl at the sampling
                     temperature (T=1 for greedy responses, and then not a KL estimate: see note)
      judge          null | {score (mean s_student/(s_student+s_reference) x 100 over n_ok items),
                             n, n_ok, n_failed, failures: {reference_error, rating_error, parse_error,
                             zero_scores}, mean_s_student, mean_s_reference, model, base_url,
                             client: {reference: counters, rating: counters}}
      judge_teacher  null (no --teacher-baseline) | the judge fields above for the rows' TEACHER responses,
                     rated against the same reference answers, plus skipped_no_teacher_response and
                     student_minus_teacher: {mean, se, n} (paired, x100, rows both were scored on)
    summary      flat: n_prompts, rouge_l, length_mean, length_median, length_p90, length_max,
                 truncation_rate, teacher_length_mean, marker_rate, teacher_marker_rate, marker_gap,
                 marker_gap_se, marker_abs_gap, c2st_accuracy, c2st_se, reverse_kl, reverse_kl_se,
                 teacher_nll, teacher_nll_se, judge_score, judge_n_ok, judge_n_failed,
                 teacher_judge_score, judge_minus_teacher, judge_minus_teacher_se
                 (null where not computed)
    timing_s     {generation, distribution, judge, total}

``generations_<name>.jsonl``, one line per prompt in data order::

    index, example_id, messages, prompt (the question text given to the judge), teacher_response,
    teacher_finish_reason (the row's finish_reason: "length" when the teacher's max_tokens cut it; null if
    the row has none), student_response, student_token_ids (no stop token), stop_id (the stop token; null
    if truncated),
    length (= len(student_token_ids)), truncated,
    prompt_tokens, prompt_truncated, rouge_l, marker_hit, teacher_marker_hit,
    judge: null | {reference, raw, s_reference, s_student, score (0..1), failure, error},
    teacher_judge: null | the same for the teacher response (with --teacher-baseline)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gadjax import paths
from gadjax.eval.judge import JudgeSettings
from gadjax.eval.settings import EvalSettings

if TYPE_CHECKING:
    from gadjax.eval.runner import evaluate_model, write_results

__all__ = ["EvalSettings", "JudgeSettings", "evaluate_model", "write_results", "main"]
_LAZY = ("evaluate_model", "write_results", "format_summary")  # import jax: loaded on first use


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from gadjax.eval import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gadjax.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="student checkpoint: HF directory or .gguf file")
    p.add_argument("--tokenizer", help="tokenizer (HF directory or .gguf); default: --model")
    p.add_argument(
        "--data",
        required=True,
        help="held-out rows: JSONL / parquet ({messages, response} or "
        "the GAD format {content, teacher_response}) or a prepared tfds directory",
    )
    p.add_argument("--split", default="test", help="split of a tfds directory")
    p.add_argument("--max-prompts", type=int, help="evaluate the first N rows (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=1536)
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts keep their end")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument(
        "--mesh",
        default="auto",
        help="data,fsdp,tensor mesh over this host's devices, e.g. 1,1,-1 (tensor parallel over all); "
        "auto (default): 1,1,-1 on GPU / TPU, one device on CPU",
    )
    p.add_argument(
        "--stop-id",
        type=int,
        action="append",
        default=[],
        help="extra stop token id (EOS and known end-of-turn tokens always stop)",
    )
    p.add_argument("--marker", help="persona marker: Python regex searched in each response")
    p.add_argument("--marker-literal", action="store_true", help="--marker is a literal phrase, not a regex")
    p.add_argument("--marker-ignore-case", action="store_true")
    p.add_argument("--rouge-stemmer", action="store_true", help="Porter stemming in ROUGE-L")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (the paper's); > 0 samples the student's responses (compare like with like when "
        "the teacher's responses were sampled)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus filter when sampling")
    d = p.add_argument_group("distribution matching")
    d.add_argument("--no-two-sample", action="store_true", help="skip the classifier two-sample test")
    d.add_argument("--two-sample-folds", type=int, default=5, help="cross-validation folds of that test")
    d.add_argument(
        "--teacher-model",
        help="the teacher's weights (HF directory or .gguf, same tokenizer as the student): adds the "
        "white-box reverse KL and teacher NLL (evaluation only)",
    )
    d.add_argument(
        "--teacher-system-prompt",
        help="the teacher's hidden system prompt (its persona), applied as everywhere in gadjax: first, "
        "merged with a conversation's own system message; the student sees the conversation without it",
    )
    j = p.add_argument_group("judge (SPEC.md protocol; skipped without --judge-url)")
    j.add_argument("--judge-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", help="model name sent to the judge")
    j.add_argument(
        "--judge-api-key-env",
        help="NAME of the environment variable holding the judge's key (default: no authentication)",
    )
    j.add_argument("--judge-temperature", type=float, default=0.0)
    j.add_argument("--judge-max-tokens", type=int, default=1024, help="for the judge's reference answer")
    j.add_argument("--judge-rating-max-tokens", type=int, default=512)
    j.add_argument("--judge-concurrency", type=int, default=4)
    j.add_argument("--judge-retries", type=int, default=4)
    j.add_argument("--judge-timeout", type=float, default=120.0)
    j.add_argument(
        "--judge-cache",
        help="SQLite cache of judge requests (default: OUT/judge_cache.sqlite; "
        "'none' disables). Shared by evaluations in one OUT, so references are paid once",
    )
    p.add_argument(
        "--teacher-baseline",
        action="store_true",
        help="also judge the data's teacher responses (same protocol and references): a 'teacher' row",
    )
    p.add_argument("--out", default="eval_out", help="output directory")
    p.add_argument("--name", help="label in the output file names (default: the model's file / dir name)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _default_name(model: str) -> str:
    base = os.path.basename(os.path.normpath(model))
    return os.path.splitext(base)[0] if base.endswith(".gguf") else base


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Usage and input errors raise SystemExit("message") or cli.InputError; run as a
    program (``run_main``), each is one line on stderr with exit status 2."""
    from gadjax import cli

    cli.quiet_tpu_start()
    args = cli.one_line_errors(build_parser(), "gadjax.evaluate").parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.judge_url and not args.judge_model:
        raise SystemExit("--judge-url needs --judge-model")
    if args.judge_model and not args.judge_url:
        raise SystemExit("--judge-model needs --judge-url")
    if args.teacher_baseline and not args.judge_url:
        raise SystemExit("--teacher-baseline needs --judge-url and --judge-model (the teacher row is judged)")
    if args.teacher_system_prompt is not None and not args.teacher_model:
        raise SystemExit("--teacher-system-prompt needs --teacher-model")
    inputs = (("--model", args.model), ("--tokenizer", args.tokenizer), ("--data", args.data))
    for flag, path in (*inputs, ("--teacher-model", args.teacher_model)):
        if path is not None and not paths.exists(path):  # before the slow imports (gs:// too)
            raise SystemExit(f"{flag}: no such file or directory: {path}")
    judge = None
    if args.judge_url:
        # SQLite needs a local disk: beside the outputs, or on this host when --out is gs://.
        cache = args.judge_cache or os.path.join(paths.local_mirror(args.out, "eval"), "judge_cache.sqlite")
        if cache.lower() == "none":
            cache = None
        else:
            os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        judge = JudgeSettings(
            base_url=args.judge_url,
            model=args.judge_model,
            api_key_env=args.judge_api_key_env,
            temperature=args.judge_temperature,
            reference_max_tokens=args.judge_max_tokens,
            rating_max_tokens=args.judge_rating_max_tokens,
            concurrency=args.judge_concurrency,
            timeout_s=args.judge_timeout,
            max_retries=args.judge_retries,
            cache_path=cache,
        )
    with cli.input_errors("arguments"):
        settings = EvalSettings(
            max_prompts=args.max_prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            max_prompt_tokens=args.max_prompt_tokens,
            marker=args.marker,
            marker_literal=args.marker_literal,
            marker_ignore_case=args.marker_ignore_case,
            judge=judge,
            teacher_baseline=args.teacher_baseline,
            rouge_stemmer=args.rouge_stemmer,
            extra_stop_ids=tuple(args.stop_id),
            seed=args.seed,
            temperature=args.temperature,
            top_p=args.top_p,
            two_sample=not args.no_two_sample,
            two_sample_folds=args.two_sample_folds,
            progress=not args.no_progress,
        )
    if settings.marker:  # fail on a bad regex before loading the model
        from gadjax.eval.markers import compile_marker

        with cli.input_errors("--marker"):
            compile_marker(settings.marker, settings.marker_ignore_case, settings.marker_literal)
    name = args.name or _default_name(args.model)

    # Heavy imports after argument checks: --help and usage errors stay fast.
    import jax.numpy as jnp

    from gadjax.data.sources import open_source
    from gadjax.eval.runner import evaluate_model, format_summary, write_results
    from gadjax.models.hf_io import load_decoder
    from gadjax.models.tokenizer import load_tokenizer
    from gadjax.parallel.mesh import local_mesh, parse_mesh_flag

    with cli.input_errors("--mesh"):
        mesh = local_mesh(parse_mesh_flag(args.mesh))
    with cli.input_errors(f"--data {args.data}"):
        source = open_source(args.data, split=args.split)
        n = len(source) if args.max_prompts is None else min(len(source), args.max_prompts)
        rows = [source[i] for i in range(n)]
    tokenizer_path = args.tokenizer or args.model
    with cli.input_errors(f"{'--tokenizer' if args.tokenizer else '--model'} {tokenizer_path}"):
        tokenizer = load_tokenizer(tokenizer_path)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    with cli.input_errors(f"--model {args.model}"):
        model = load_decoder(args.model, dtype=dtype, mesh=mesh)
    teacher = None
    if args.teacher_model:
        with cli.input_errors(f"--teacher-model {args.teacher_model}"):
            teacher = load_decoder(args.teacher_model, dtype=dtype, mesh=mesh)
    result = evaluate_model(
        model,
        tokenizer,
        rows,
        settings,
        teacher_model=teacher,
        teacher_system_prompt=args.teacher_system_prompt,
        mesh=mesh,
    )
    info = {
        "model": paths.absolute(args.model),
        "tokenizer": paths.absolute(args.tokenizer or args.model),
        "data": paths.absolute(args.data),
    }
    if args.teacher_model:
        info["teacher_model"] = paths.absolute(args.teacher_model)
    eval_path, gen_path = write_results(result, args.out, name, info)
    print(format_summary(result, name))
    print(f"wrote {eval_path}\nwrote {gen_path}")
    return 0


if __name__ == "__main__":
    from gadjax.cli import run_main

    sys.exit(run_main("gadjax.evaluate", main))
