"""docs/recipe.md, as a user runs it: the recipe configs refuse a launch that would skip the warmup, and the
tiny-scale block of the page runs line by line through the CLIs (collect from a loopback teacher, warmup,
gad from it with evaluation and selection, evaluate the selected export, serve it and ask it once)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import pytest

from gadjax.config import ConfigValidationError
from gadjax.trainer.validation import validate
from tests.eval.fake_judge import judge_answerer
from tests.teacher.fake_server import FakeOpenAI, answer_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "docs", "recipe.md")
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402


def _load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(ROOT, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if arg is None else mod.get_config(arg)


@pytest.mark.parametrize(
    "name,arg,env",
    [
        ("v5p.py", None, "0.5b"),
        ("v5p_lora.py", "7b", "0.5b"),
        ("gpu.py", None, "0.5b"),
        ("gpu.py", None, "7b"),
    ],
)
def test_recipe_configs_leave_the_stage_to_the_launch_line(monkeypatch, name, arg, env):
    monkeypatch.setenv("GADJAX_GPU_MODEL", env)
    c = _load(name, arg)
    assert c.stage == "" and c.allow_gad_from_scratch is False and c.data.num_epochs == 1
    with pytest.raises(ConfigValidationError, match=r"^config\.stage: not set: pass --config\.stage="):
        validate(c)


def test_gad_without_init_from_is_a_config_error_unless_opted_in(tmp_path):
    c = tiny.get_config()
    c.allow_gad_from_scratch = False
    c.run_dir = str(tmp_path / "gad")
    with pytest.raises(ConfigValidationError, match=r"^config\.init_from: gad starts from the warmup run"):
        validate(c)
    (tmp_path / "warmup" / "checkpoints").mkdir(parents=True)
    c.init_from = str(tmp_path / "warmup")
    validate(c)
    c.init_from, c.allow_gad_from_scratch = "", True  # the ablation, asked for
    validate(c)
    c.stage = "warmup"
    c.allow_gad_from_scratch = False
    validate(c)  # only gad needs a warmup run


def tiny_block() -> list[str]:
    """The commands of docs/recipe.md's tiny-scale block (continuations joined, comments dropped)."""
    text = open(RECIPE).read()
    m = re.search(r"<!-- recipe-tiny: begin -->\n```bash\n(.*?)```\n<!-- recipe-tiny: end -->", text, re.S)
    assert m, "docs/recipe.md has no recipe-tiny block"
    joined = m.group(1).replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _argv(line: str, env: dict[str, str]) -> list[str]:
    words = [re.sub(r"\$(\w+)", lambda v: env[v.group(1)], w) for w in shlex.split(line)]
    assert words[0] == "python", line
    return [sys.executable, *words[1:]]


@pytest.mark.slow
def test_the_tiny_recipe_block_runs_through_the_clis(tmp_path):
    lines = tiny_block()
    assert lines[0].startswith("W=") and lines[-1].startswith("python -m gadjax.serve"), lines
    teacher = FakeOpenAI()
    teacher.start()
    judge = FakeOpenAI()
    judge.answer = judge_answerer({})  # the judge protocol: references, then "8 6" ratings
    judge.start()
    env = dict(os.environ, W=str(tmp_path / "w"), TEACHER_URL=teacher.base_url, JUDGE_URL=judge.base_url)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one CPU device, as a user has: configs/tiny.py as it is
    times, outputs = {}, {}
    try:
        for line in lines[1:-1]:
            t0 = time.perf_counter()
            proc = subprocess.run(
                _argv(line, env), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            times[line.split()[2]] = times.get(line.split()[2], 0) + time.perf_counter() - t0
            assert proc.returncode == 0, (line, proc.stderr[-4000:])
            outputs[line] = proc.stdout
    finally:
        teacher.stop()
        judge.stop()
    w = tmp_path / "w"
    # collect: one row per prompt, each the teacher's own answer.
    rows = [json.loads(x) for x in open(w / "corpus.jsonl")]
    prompts = [
        json.loads(x)["messages"][-1]["content"]
        for x in open(os.path.join(ROOT, "configs/tiny_assets/train.jsonl"))
    ]
    assert [r["response"] for r in rows] == [answer_for(p) for p in prompts]
    # collect --status: what the budget spent, priced; it sends nothing (one request per distinct prompt).
    status = json.loads(next(out for line, out in outputs.items() if "--status" in line))
    assert status["answered"] == status["requests"] == len(teacher.requests) == len(set(prompts))
    want_cost = (status["prompt_tokens"] * 1.25 + status["completion_tokens"] * 10) / 1e6
    assert status["estimated_cost_usd"] == pytest.approx(want_cost)
    # warmup, then gad started from it (the reference source names the warmup run).
    assert (w / "warmup" / "checkpoints" / "1").is_dir()
    gad = [json.loads(x) for x in open(w / "gad" / "metrics.jsonl")]
    assert [r["step"] for r in gad] == [1, 2] and {r["stage"] for r in gad} == {"gad"}
    assert all("eval/rouge_l" in r for r in gad)
    assert json.load(open(w / "gad" / "config.json"))["init_from"] == str(w / "warmup")
    sel = json.load(open(w / "gad" / "selection.json"))
    assert sel["metric"] == "rouge_l" and sel["selected_step"] in (1, 2)
    assert (w / "gad" / "export" / "best" / "model.safetensors").is_file()
    assert json.load(open(w / "gad" / "export" / "best" / "config.json"))["torch_dtype"] == "bfloat16"
    # evaluate: every test prompt answered by the selected export.
    ev = json.load(open(w / "eval" / "eval_best.json"))
    assert ev["counts"]["prompts"] == sum(
        1 for _ in open(os.path.join(ROOT, "configs/tiny_assets/test.jsonl"))
    )
    # the judge rated the student and, as the baseline row, the teacher's own answers.
    assert ev["metrics"]["judge"]["n_ok"] == ev["counts"]["prompts"]
    assert ev["metrics"]["judge_teacher"]["n_ok"] == ev["counts"]["prompts"]
    assert ev["summary"]["teacher_judge_score"] is not None
    # serve: the documented line on a free port, one chat request over HTTP.
    argv = _argv(lines[-1].replace("--port 8000", "--port 0"), env)
    t0 = time.perf_counter()
    server = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        ready = server.stdout.readline()
        m = re.search(r"listening on (\S+) \(model (.*)\)$", ready.strip())
        assert m, ready
        body = {"messages": [{"role": "user", "content": "Explain rain."}], "max_tokens": 8}
        req = urllib.request.Request(
            f"{m.group(1)}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        reply = json.load(urllib.request.urlopen(req, timeout=300))
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert 1 <= reply["usage"]["completion_tokens"] <= 8
    finally:
        server.terminate()
        server.wait(timeout=60)
    times["serve"] = time.perf_counter() - t0
    print("recipe block seconds per command:", {k: round(v, 1) for k, v in times.items()})
