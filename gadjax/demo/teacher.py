"""The teacher corpus: the demo's prompts (data/demo/) and the persona teacher's responses to them,
collected through gadjax's TeacherClient and its SQLite cache under a port-independent key
(``collect_teacher``; the teacher server is started only for responses not cached yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from gadjax.demo.likeness import TEACHER_PROMPT_TOKENS
from gadjax.demo.servers import LocalServer
from gadjax.demo.timing import say

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS_DIR = os.path.join(REPO_ROOT, "data", "demo")
# The teacher cache is keyed by this stable address instead of the server's random port.
STABLE_TEACHER_URL = "http://gadjax-demo-teacher.local/v1"
SPLITS = ("train", "heldout")


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

    # Refusals are keyed like responses; spend is the file's (gadjax.teacher.cache).
    def get_failure(self, key: str) -> Any:
        return self._cache.get_failure(self._map.get(key, key))

    def put_failure(self, key: str, *args: Any, **kwargs: Any) -> None:
        self._cache.put_failure(self._map.get(key, key), *args, **kwargs)

    def clear_failure(self, key: str) -> None:
        self._cache.clear_failure(self._map.get(key, key))

    def spend(self) -> dict[str, int]:
        return self._cache.spend()

    def add_spend(self, **kwargs: int) -> None:
        self._cache.add_spend(**kwargs)

    @property
    def path(self) -> str:
        return self._cache.path

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
                max_prompt_tokens=TEACHER_PROMPT_TOKENS,  # the hidden persona + the longest demo prompt
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
