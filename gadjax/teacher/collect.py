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
included: the student must not see the teacher's persona; the teacher gets it by gadjax's one rule,
gadjax.data.chat.with_hidden_system_prompt). The summary goes to stderr and, as one JSON line, to stdout.

Budgets: the cache records what was spent over every invocation, and ``--max-requests`` /
``--max-total-tokens`` are totals for that cache: a rerun with the same limit does not spend it again.
``--status`` reports the cache (answered, failed, requests and tokens spent, and with
``--price-input-per-mtok`` / ``--price-output-per-mtok`` an estimated cost; with ``--prompts``,
``--base-url`` and ``--model`` also how many of those prompts are answered, failed or still to do) and
sends nothing. Prompts the teacher refused (HTTP 400 / 413 / 422, no text, content filter) are recorded
in the cache and not asked again unless ``--retry-failed``.

Exit status: 0 done, 1 some prompts failed (no corpus unless ``--allow-failures``), 2 bad input, 3 a
spending limit was reached: every response received is in the cache, the prompts answered so far (cached
ones included) are written to ``<out>.partial`` with the count of prompts still missing, and a rerun
with a higher limit continues without paying again.
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
from gadjax.teacher.cache import ResponseCache
from gadjax.teacher.client import SpendingLimitReached, TeacherClient, TeacherError
from gadjax.teacher.config import DEFAULT_MAX_TOKENS, TeacherConfig, TeacherConfigError

log = logging.getLogger("gadjax.teacher")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gadjax.teacher.collect", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", help="JSONL or .parquet prompt file (required unless --status)")
    ap.add_argument("--out", help="corpus JSONL to write (required unless --status with --cache)")
    ap.add_argument(
        "--base-url",
        help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (required unless --status)",
    )
    ap.add_argument("--model", help="teacher model name (required unless --status)")
    ap.add_argument(
        "--status",
        action="store_true",
        help="report the cache (answered, failed, spent, estimated cost) and send nothing",
    )
    ap.add_argument("--price-input-per-mtok", type=float, default=0.0, help="USD per million prompt tokens")
    ap.add_argument(
        "--price-output-per-mtok", type=float, default=0.0, help="USD per million completion tokens"
    )
    ap.add_argument(
        "--retry-failed", action="store_true", help="ask again for prompts the cache records as refused"
    )
    ap.add_argument(
        "--api-key-env",
        default=None,
        help="NAME of the environment variable holding the API key (omit for no auth)",
    )
    ap.add_argument("--system-prompt", default=None, help="hidden system prompt sent to the teacher")
    ap.add_argument("--cache", default=None, help="SQLite cache (default: <out>.cache.sqlite)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"teacher response length (default {DEFAULT_MAX_TOKENS}, the training configs' default too)",
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--requests-per-s", type=float, default=0.0, help="0 = unlimited")
    ap.add_argument("--tokens-per-min", type=float, default=0.0, help="0 = unlimited")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="spending limit: HTTP requests, total for the cache over every run (0 = none)",
    )
    ap.add_argument(
        "--max-total-tokens",
        type=int,
        default=0,
        help="spending limit: prompt + completion tokens, total for the cache over every run (0 = none)",
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


def _read_prompts(args: argparse.Namespace, bad: BadRowCounter) -> list[tuple[str, list]]:
    name = os.path.basename(args.prompts)
    return [
        (f"{name}:{i}", row.messages)
        for i, row in read_rows(args.prompts, skip_bad_rows=args.skip_bad_rows, counter=bad)
    ]


def _teacher_config(args: argparse.Namespace, cache_path: str) -> TeacherConfig:
    return TeacherConfig(
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
        cache_path=cache_path,
        max_requests=args.max_requests,
        max_total_tokens=args.max_total_tokens,
        retry_failed=args.retry_failed,
    )


def _cache_path(args: argparse.Namespace) -> str:
    return args.cache or args.out + ".cache.sqlite"


def estimated_cost(spent: dict[str, int], args: argparse.Namespace) -> float | None:
    """USD from the per-million-token prices given (None when no price was given)."""
    pin, pout = args.price_input_per_mtok, args.price_output_per_mtok
    if not pin and not pout:
        return None
    return round((spent["prompt_tokens"] * pin + spent["completion_tokens"] * pout) / 1e6, 6)


def _missing_arguments(args: argparse.Namespace) -> str | None:
    if args.status:
        return None if (args.cache or args.out) else "--status needs --cache or --out"
    missing = [
        f"--{k.replace('_', '-')}" for k in ("prompts", "out", "base_url", "model") if not getattr(args, k)
    ]
    return f"the following arguments are required: {', '.join(missing)}" if missing else None


def status(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """``--status``: what the cache holds and what it cost; nothing is sent."""
    path = _cache_path(args)
    if not os.path.exists(path):
        print(f"collect: --status: no cache at {path}", file=sys.stderr)
        return 2, {"error": f"no cache at {path}"}
    with ResponseCache(path) as cache:
        summary: dict[str, Any] = {"cache": path, **cache.status()}
        summary["tokens"] = summary["prompt_tokens"] + summary["completion_tokens"]
        summary["estimated_cost_usd"] = estimated_cost(summary, args)
        if args.prompts and args.base_url and args.model:
            bad = BadRowCounter()
            try:
                rows = _read_prompts(args, bad)
                cfg = _teacher_config(args, path)
            except (DataError, OSError, TeacherConfigError) as e:
                print(f"collect: --status: {one_line(e)}", file=sys.stderr)
                return 2, {"error": str(e)}
            keyer = TeacherClient(cfg, cache=cache)  # keys only: nothing is sent
            counts = {"answered": 0, "failed": 0, "to_do": 0}
            for _, messages in rows:
                for sample in range(cfg.n_samples):
                    key = keyer.key_for(messages, sample)
                    failure = None if key in cache else cache.get_failure(key)
                    kind = (
                        "answered" if key in cache else "failed" if failure and failure.permanent else "to_do"
                    )
                    counts[kind] += 1
            summary["prompts"] = {"file": args.prompts, "rows": len(rows), "samples": counts}
    return 0, summary


def collect(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Run one collection; returns (exit status, summary)."""
    t0 = time.perf_counter()
    bad = BadRowCounter()
    try:
        rows = _read_prompts(args, bad)
    except (DataError, OSError) as e:
        print(f"collect: bad prompts: {one_line(e)}", file=sys.stderr)
        return 2, {"error": str(e)}
    try:
        cfg = _teacher_config(args, _cache_path(args))
        if cfg.api_key_env is not None:
            cfg.api_key()  # fail now, not once per prompt
    except TeacherConfigError as e:
        print(f"collect: {one_line(e)}", file=sys.stderr)
        return 2, {"error": str(e)}

    partial = args.out + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    failed: list[TeacherError] = []
    limit: SpendingLimitReached | None = None
    missing = 0  # prompts left unanswered because a spending limit was reached
    written = 0
    max_ahead = args.max_ahead or 4 * cfg.concurrency
    with (
        TeacherClient(cfg) as client,
        open(partial, "w", encoding="utf-8") as f,
        tqdm(total=len(rows), unit="prompt", disable=args.no_progress, file=sys.stderr) as bar,
    ):
        for pid, messages, result in client.iter_results(rows, max_ahead=max_ahead):
            if isinstance(result, SpendingLimitReached):
                # No new request is sent; later prompts already in the cache still go into the partial
                # corpus (a cache hit costs nothing), the others are counted as missing.
                limit = limit or result
                missing += 1
            elif isinstance(result, TeacherError):
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
        spent = client.cache.spend() if client.cache is not None else {}

    status = 0
    out: str | None = None
    if limit is not None:
        status, out = 3, partial  # kept: the prompts answered so far, usable as a (smaller) corpus
    elif failed and not args.allow_failures:
        os.remove(partial)
        status = 1
    else:
        os.replace(partial, args.out)  # atomic: readers see the old corpus or the whole new one
        _fsync_dir(args.out)
        out = args.out
    summary = {
        "prompts": len(rows),
        "samples_written": written if out is not None else 0,
        "missing_prompts": missing,
        "cache_hits": counters["cache_hits"],
        "requests": counters["requests"],
        "retries": counters["retries"],
        "retries_by_cause": counters["retries_by_cause"],
        "failures": len(failed),
        "failures_cached": counters["failures_cached"],
        "failed": [str(e) for e in failed[:5]],
        "prompt_tokens": counters["prompt_tokens"],
        "completion_tokens": counters["completion_tokens"],
        "cache_total": spent,
        "estimated_cost_usd": estimated_cost(spent, args) if spent else None,
        "bad_rows": bad.report(),
        "seconds": round(time.perf_counter() - t0, 3),
        "out": out,
        "spending_limit": str(limit).split(": ", 1)[1] if limit is not None else None,
    }
    return status, summary


def main(argv: list[str] | None = None) -> int:
    """The command line; bad input (arguments, prompts, teacher settings) is one line on stderr, exit 2."""
    from gadjax.cli import one_line_errors

    parser = one_line_errors(build_parser(), "collect")
    args = parser.parse_args(argv)
    problem = _missing_arguments(args)
    if problem:
        parser.error(problem)
    _setup_logging(args.log_file)
    if args.status:
        code, summary = status(args)
        if code == 0:
            print(_status_line(summary), file=sys.stderr)
        print(json.dumps(summary), flush=True)
        return code
    code, summary = collect(args)
    if "prompts" in summary:
        lines = [
            f"collect: {summary['prompts']} prompts, {summary['cache_hits']} cache hits, "
            f"{summary['requests']} requests, {summary['retries']} retries "
            f"{summary['retries_by_cause']}, {summary['failures']} failures, "
            f"{summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion tokens, "
            f"{summary['bad_rows']['skipped']} bad rows skipped, {summary['seconds']} s"
        ]
        lines += [f"  failed: {m}" for m in summary["failed"]]
        total = summary["cache_total"]
        if total:
            cost = summary["estimated_cost_usd"]
            lines.append(
                f"collect: spent through this cache, every run together: {total['requests']} requests, "
                f"{total['prompt_tokens']} prompt + {total['completion_tokens']} completion tokens"
                + (f", estimated ${cost:.4f}" if cost is not None else "")
            )
        if code == 1:
            lines.append(
                f"collect: {summary['failures']} prompts failed; no corpus written (rerun to retry: "
                "cached responses are not requested again, or pass --allow-failures)"
            )
        if code == 3:
            lines.append(
                f"collect: stopped: {summary['spending_limit']}. Partial corpus {summary['out']}: "
                f"{summary['samples_written']} samples; {summary['missing_prompts']} prompts missing"
            )
        for line in lines:
            print(line, file=sys.stderr)
            log.info("%s", line)
    print(json.dumps(summary), flush=True)
    return code


def _status_line(s: dict[str, Any]) -> str:
    line = (
        f"collect --status {s['cache']}: {s['answered']} answered, {s['failed_permanent']} refused, "
        f"{s['failed_retries_exhausted']} failed after retries; spent {s['requests']} requests, "
        f"{s['prompt_tokens']} prompt + {s['completion_tokens']} completion tokens"
    )
    if s["estimated_cost_usd"] is not None:
        line += f", estimated ${s['estimated_cost_usd']:.4f}"
    if "prompts" in s:
        c = s["prompts"]["samples"]
        line += (
            f"; {s['prompts']['file']}: {c['answered']} samples answered, {c['failed']} refused, "
            f"{c['to_do']} to do"
        )
    return line


if __name__ == "__main__":
    sys.exit(main())
