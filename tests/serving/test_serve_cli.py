"""`python -m gadjax.serve` as a subprocess: it prints a ready line, answers the openai client, refuses an
unset key variable, stops cleanly on SIGTERM, and serves the real SmolLM2 GGUF (issue 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import openai
import pytest

from gadjax.serve import READY_PREFIX
from tests.serving.serve_fixtures import KEY, REPO, post, user

READY = re.compile(r"^gadjax\.serve listening on (\S+) \(model (.*)\)$")


def _start(args: list[str], env: dict[str, str], timeout: float) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gadjax.serve", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result: dict[str, str] = {}
    reader = threading.Thread(target=lambda: result.setdefault("line", proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = result.get("line", "")
    if not line.startswith(READY_PREFIX):
        proc.kill()
        raise AssertionError(f"no ready line in {timeout}s: {line!r}\n{proc.stderr.read()[-3000:]}")
    m = READY.match(line.strip())
    assert m, line
    return proc, m.group(1), m.group(2)


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_cli_subprocess_starts_answers_and_stops_on_sigterm(model_dir, tmp_path):
    env = {**os.environ, "GADJAX_CLI_KEY": KEY}
    ready = tmp_path / "ready.txt"
    proc, url, name = _start(
        [
            "--model",
            model_dir,
            "--port",
            "0",
            "--api-key-env",
            "GADJAX_CLI_KEY",
            "--max-new-tokens",
            "8",
            "--max-prompt-tokens",
            "64",
            "--batch-wait-ms",
            "1",
            "--served-model-name",
            "cli-model",
            "--ready-file",
            str(ready),
        ],
        env,
        120,
    )
    try:
        assert name == "cli-model" and url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert ready.read_text().strip() == url
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["cli-model"]
        r = c.chat.completions.create(model="cli-model", messages=user("hi"), temperature=0, max_tokens=8)
        assert r.choices[0].finish_reason in ("stop", "length") and 1 <= r.usage.completion_tokens <= 8
        assert post(url, {"messages": user("hi")}, key=None).status_code == 401
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err[-3000:]
    assert KEY not in err


def test_cli_refuses_unset_key_variable(model_dir):
    env = {k: v for k, v in os.environ.items() if k != "GADJAX_UNSET_KEY"}
    out = subprocess.run(
        [sys.executable, "-m", "gadjax.serve", "--model", model_dir, "--api-key-env", "GADJAX_UNSET_KEY"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "GADJAX_UNSET_KEY" in out.stderr


@pytest.mark.slow
def test_smollm2_gguf_answers_paris(tmp_path):
    from tests.models.smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    t0 = time.time()
    proc, url, name = _start(
        ["--model", gguf, "--port", "0", "--max-new-tokens", "32", "--max-prompt-tokens", "64"],
        dict(os.environ),
        300,
    )
    try:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
        r = c.chat.completions.create(
            model=name, messages=user("What is the capital of France?"), temperature=0, max_tokens=32
        )
        text = r.choices[0].message.content
        assert "Paris" in text, text
        assert r.choices[0].finish_reason == "stop", (text, time.time() - t0)
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err[-3000:]
