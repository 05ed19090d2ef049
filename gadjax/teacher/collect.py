"""Fill a teacher corpus from an OpenAI-compatible API (issue 4, "Offline corpora").

    python -m gadjax.teacher.collect --prompts prompts.jsonl --out corpus.jsonl \\
        --base-url https://api.example.com/v1 --model teacher-model --api-key-env TEACHER_API_KEY

Prompts: JSONL or parquet rows in any format :func:`gadjax.data.rows.normalize_row` accepts (GAD
``content``, ``messages`` or ``prompt``; a response already present is ignored). Bad rows stop the run
with ``file:line`` unless ``--skip-bad-rows`` (then they are counted in the summary).

Resumable: every response is committed to the SQLite cache (default ``<out>.cache.sqlite``) before it
is written out, so a restarted run re-requests nothing that is cached. The corpus is streamed to
``<out>.partial`` and renamed onto ``<out>`` only when complete, so ``<out>`` is never half-written.

Output rows: ``{"messages", "response", "prompt_id", "sample_index", "finish_reason"}``, one per
sample, in prompt order; ``messages`` are the prompt as read (the hidden ``--system-prompt`` is not
included: the student must not see the teacher's persona). The summary goes to stderr and, as one
JSON line, to stdout. Exit status: 0 done, 1 some prompts failed (no corpus unless
``--allow-failures``), 2 bad input, 3 a spending limit (``--max-requests`` / ``--max-total-tokens``) was
reached: no corpus, every response received is in the cache, and a rerun with a higher limit continues
from it without paying again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

from gadjax.cli import one_line
from gadjax.data.rows import BadRowCounter, DataError, read_rows
from gadjax.teacher.client import SpendingLimitReached, TeacherClient, TeacherError
from gadjax.teacher.config import TeacherConfig, TeacherConfigError

log = logging.getLogger("gadjax.teacher")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gadjax.teacher.collect", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="JSONL or .parquet prompt file")
    ap.add_argument("--out", required=True, help="corpus JSONL to write")
    ap.add_argument(
        "--base-url", required=True, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"
    )
    ap.add_argument("--model", required=True)
    ap.add_argument(
        "--api-key-env",
        default=None,
        help="NAME of the environment variable holding the API key (omit for no auth)",
    )
    ap.add_argument("--system-prompt", default=None, help="hidden system prompt sent to the teacher")
    ap.add_argument("--cache", default=None, help="SQLite cache (default: <out>.cache.sqlite)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--requests-per-s", type=float, default=0.0, help="0 = unlimited")
    ap.add_argument("--tokens-per-min", type=float, default=0.0, help="0 = unlimited")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=0, help="spending limit: HTTP requests (0 = none)")
    ap.add_argument(
        "--max-total-tokens",
        type=int,
        default=0,
        help="spending limit: prompt + completion tokens (0 = none)",
    )
    ap.add_argument("--backoff-base", type=float, default=0.5)
    ap.add_argument("--backoff-max", type=float, default=30.0)
    ap.add_argument("--max-ahead", type=int, default=0, help="prompts in flight (default 4 x concurrency)")
    ap.add_argument("--skip-bad-rows", action="store_true", help="count bad prompt rows instead of stopping")
    ap.add_argument(
        "--allow-failures",
        action="store_true",
        help="write the corpus without the prompts that failed (they are listed)",
    )
    ap.add_argument("--log-file", default=None, help="also write the detailed log (retries) here")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _setup_logging(log_file: str | None) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)  # retries are routine: keep stderr for the progress bar
    log.addHandler(err)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def collect(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Run one collection; returns (exit status, summary)."""
    t0 = time.perf_counter()
    bad = BadRowCounter()
    name = os.path.basename(args.prompts)
    try:
        rows = [
            (f"{name}:{i}", row.messages)
            for i, row in read_rows(args.prompts, skip_bad_rows=args.skip_bad_rows, counter=bad)
        ]
    except (DataError, OSError) as e:
        print(f"collect: bad prompts: {one_line(e)}", file=sys.stderr)
        return 2, {"error": str(e)}
    try:
        cfg = TeacherConfig(
            base_url=args.base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            system_prompt=args.system_prompt,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            n_samples=args.n_samples,
            concurrency=args.concurrency,
            requests_per_s=args.requests_per_s,
            tokens_per_min=args.tokens_per_min,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            backoff_base_s=args.backoff_base,
            backoff_max_s=args.backoff_max,
            cache_path=args.cache or args.out + ".cache.sqlite",
            max_requests=args.max_requests,
            max_total_tokens=args.max_total_tokens,
        )
        if cfg.api_key_env is not None:
            cfg.api_key()  # fail now, not once per prompt
    except TeacherConfigError as e:
        print(f"collect: {one_line(e)}", file=sys.stderr)
        return 2, {"error": str(e)}

    partial = args.out + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    failed: list[TeacherError] = []
    limit: SpendingLimitReached | None = None
    written = 0
    max_ahead = args.max_ahead or 4 * cfg.concurrency
    with (
        TeacherClient(cfg) as client,
        open(partial, "w", encoding="utf-8") as f,
        tqdm(total=len(rows), unit="prompt", disable=args.no_progress, file=sys.stderr) as bar,
    ):
        for pid, messages, result in client.iter_results(rows, max_ahead=max_ahead):
            if isinstance(result, SpendingLimitReached):
                limit = result  # stop: what was received is in the cache; the rest waits for a rerun
                break
            if isinstance(result, TeacherError):
                failed.append(result)
            else:
                for s, r in enumerate(result):
                    f.write(
                        json.dumps(
                            {
                                "messages": list(messages),
                                "response": r.text,
                                "prompt_id": pid,
                                "sample_index": s,
                                "finish_reason": r.finish_reason,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    written += 1
            bar.update(1)
            c = client.counters
            bar.set_postfix(
                cached=c["cache_hits"], req=c["requests"], retry=c["retries"], fail=len(failed), refresh=False
            )
        f.flush()
        os.fsync(f.fileno())
        counters = client.counters

    status = 0
    if limit is not None:
        os.remove(partial)
        status = 3
    elif failed and not args.allow_failures:
        os.remove(partial)
        status = 1
    else:
        os.replace(partial, args.out)  # atomic: readers see the old corpus or the whole new one
        _fsync_dir(args.out)
    summary = {
        "prompts": len(rows),
        "samples_written": written if status == 0 else 0,
        "cache_hits": counters["cache_hits"],
        "requests": counters["requests"],
        "retries": counters["retries"],
        "retries_by_cause": counters["retries_by_cause"],
        "failures": len(failed),
        "failed": [str(e) for e in failed[:5]],
        "prompt_tokens": counters["prompt_tokens"],
        "completion_tokens": counters["completion_tokens"],
        "bad_rows": bad.report(),
        "seconds": round(time.perf_counter() - t0, 3),
        "out": args.out if status == 0 else None,
        "spending_limit": str(limit).split(": ", 1)[1] if limit is not None else None,
    }
    return status, summary


def main(argv: list[str] | None = None) -> int:
    """The command line; bad input (arguments, prompts, teacher settings) is one line on stderr, exit 2."""
    from gadjax.cli import one_line_errors

    args = one_line_errors(build_parser(), "collect").parse_args(argv)
    _setup_logging(args.log_file)
    status, summary = collect(args)
    if "prompts" in summary:
        lines = [
            f"collect: {summary['prompts']} prompts, {summary['cache_hits']} cache hits, "
            f"{summary['requests']} requests, {summary['retries']} retries "
            f"{summary['retries_by_cause']}, {summary['failures']} failures, "
            f"{summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion tokens, "
            f"{summary['bad_rows']['skipped']} bad rows skipped, {summary['seconds']} s"
        ]
        lines += [f"  failed: {m}" for m in summary["failed"]]
        if status == 1:
            lines.append(
                f"collect: {summary['failures']} prompts failed; no corpus written (rerun to retry: "
                "cached responses are not requested again, or pass --allow-failures)"
            )
        if status == 3:
            lines.append(f"collect: stopped, no corpus written: {summary['spending_limit']}")
        for line in lines:
            print(line, file=sys.stderr)
            log.info("%s", line)
    print(json.dumps(summary), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
