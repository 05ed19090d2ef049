"""The embedded demo at its CI budget (`python -m gadjax.demo.run --budget ci`), run as a subprocess like
`make demo` runs it, then its artefacts checked against references nobody here wrote: matplotlib reads
the PNGs back, transformers loads the exported student, the OS says the servers are gone.

Slow: a real 135M model through the teacher server, three training stages, four evaluations and the
judge server (minutes on 2 cores). A second invocation must reuse the teacher cache (no request).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gadjax.metrics import read_metrics
from tests.models.smollm2 import smollm2_gguf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the demo runs as `make demo` does: one CPU device
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_demo(out: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gadjax.demo.run", "--out", out, "--budget", "ci", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        f"demo failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is stopped all the same.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_demo_ci_budget_artefacts(tmp_path):
    smollm2_gguf()  # skips with the pip command when the wheel is missing
    out = str(tmp_path / "demo")
    proc = _run_demo(out, "--judge")  # the judge is off by default; this run covers it

    # The last printed lines name the report and the key numbers.
    tail = proc.stdout.strip().splitlines()[-6:]
    assert any("report:" in line and "report.md" in line for line in tail), tail
    assert tail[-1].startswith("[demo] key numbers") and "gad: marker" in tail[-1], tail

    # report.md with the before / seqkd / gad / teacher table.
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "| metric | before | warmup | seqkd_last | seqkd | gad_last | gad | teacher |" in report
    assert "Selection (paper protocol, as the study)" in report
    labels = ("C2ST accuracy, sampled", "marker gap, sampled", "persona marker rate", "ROUGE-L F1 vs teacher")
    for label in (*labels, "judge score", "response length"):
        assert label in report, label
    assert "python -m gadjax.serve --model" in report and "/export/" in report
    assert "135M judge is weak" in report

    # Plots: valid PNGs that matplotlib reads back as images.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    names = ["d_acc", "d_scores", "reward", "response_length", "losses", "metrics_bars"]
    for name in names:
        path = os.path.join(out, f"{name}.png")
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, path
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)
        assert f"]({name}.png)" in report

    # Metrics of every stage have the keys the report plots.
    need = {
        "warmup": {"d_loss", "d_acc", "teacher_score_mean", "student_score_mean", "response_length_mean"},
        "gad": {"d_loss", "d_acc", "reward_mean", "reward_std", "pg_loss", "kl_loss", "response_length_mean"},
        "seqkd": {"sft_loss"},
    }
    for stage, keys in need.items():
        records = read_metrics(os.path.join(out, stage))
        assert records and all(r["stage"] == stage for r in records)
        assert keys <= set().union(*records), (stage, keys - set().union(*records))
    assert any("sft_loss" in r for r in read_metrics(os.path.join(out, "warmup")))
    for stage in ("warmup", "gad"):  # D's accuracy on the validation prompts, at every evaluation
        assert any("eval/disc_val_accuracy" in r for r in read_metrics(os.path.join(out, stage))), stage
    assert "## Discriminator on validation prompts" in report and "| warmup | " in report
    # Every stage is evaluated on the validation split; gad and seqkd select on it (selection.json).
    for stage in ("warmup", "gad", "seqkd"):
        assert any("eval/length_mean" in r for r in read_metrics(os.path.join(out, stage))), stage
    for stage in ("gad", "seqkd"):
        sel = json.load(open(os.path.join(out, stage, "selection.json"), encoding="utf-8"))
        assert sel["metric"] == "c2st_accuracy" and sel["candidates"] >= 1, sel

    # Evaluations: every model has the summary numbers; the judge failures are counted, not hidden.
    for name in ("before", "warmup", "seqkd_last", "seqkd", "gad_last", "gad"):
        ev = json.load(open(os.path.join(out, f"eval_{name}.json"), encoding="utf-8"))
        s = ev["summary"]
        assert 0.0 <= s["marker_rate"] <= 1.0 and 0.0 <= s["rouge_l"] <= 1.0 and s["length_mean"] > 0
        # Distribution metrics: both sides sampled at the teacher's temperature (like with like).
        assert 0.0 <= s["c2st_accuracy"] <= 1.0 and s["c2st_se"] >= 0  # 0 when accuracy is 0 or 1
        assert -1.0 <= s["marker_gap"] <= 1.0 and s["marker_gap_se"] >= 0
        assert ev["metrics"]["likeness"]["decoding"]["temperature"] == 0.7
        assert s["judge_n_ok"] + s["judge_n_failed"] == 2  # the CI budget judges 2 prompts

    # The exported GAD student loads in transformers (the reference implementation) and generates.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = os.path.join(out, "gad", "export", "student")
    model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4 or int(gen[0, -1]) == tok.eos_token_id

    # Both servers were started and are gone.
    state = json.load(open(os.path.join(out, "demo_state.json"), encoding="utf-8"))
    assert 0.0 <= state["teacher_resample"]["c2st_accuracy"] <= 1.0
    for name in ("teacher", "judge"):
        info = state["servers"][name]
        assert info and info["returncode"] == 0 and not info["running"], (name, info)
        assert _pid_gone(info["pid"]), (name, info["pid"])
    assert state["teacher"]["fresh_responses"] == 12 and state["teacher"]["failures"] == 0

    # A second run reuses the teacher cache: no request, no teacher server.
    _run_demo(out, "--teacher-only")
    state2 = json.load(open(os.path.join(out, "demo_state.json"), encoding="utf-8"))
    assert state2["teacher"]["requests"] == 0 and state2["teacher"]["cache_hits"] == 12
    assert state2["servers"]["teacher"] is None
