"""``python -m gadjax.evaluate`` end to end on a tiny random Qwen2 checkpoint with the tiny ChatML
tokenizer and configs/tiny_assets/test.jsonl; greedy tokens checked against transformers' generate."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from gadjax.eval.rouge import rouge_l_f1
from gadjax.evaluate import main
from gadjax.models.tokenizer import load_tokenizer
from tests.eval.fake_judge import reference_for, split_rating_request, start_judge
from tests.models.hf_fixtures import make_hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "configs", "tiny_assets", "tokenizer")
DATA = os.path.join(ROOT, "configs", "tiny_assets", "test.jsonl")
MAX_NEW = 8
EVAL_KEYS = {"name", "model", "tokenizer", "data", "settings", "decoding", "counts", "metrics", "summary",
             "timing_s"}
GEN_KEYS = {"index", "example_id", "messages", "prompt", "teacher_response", "teacher_finish_reason",
            "student_response", "student_token_ids", "stop_id", "length", "truncated", "prompt_tokens",
            "prompt_truncated", "rouge_l", "marker_hit", "teacher_marker_hit", "judge", "teacher_judge"}
SUMMARY_KEYS = {"n_prompts", "rouge_l", "length_mean", "length_median", "length_p90", "length_max",
                "truncation_rate", "teacher_length_mean", "marker_rate", "teacher_marker_rate", "marker_gap",
                "marker_gap_se", "marker_abs_gap", "c2st_accuracy", "c2st_se", "reverse_kl", "reverse_kl_se",
                "teacher_nll", "teacher_nll_se", "judge_score", "judge_n_ok", "judge_n_failed",
                "teacher_judge_score", "judge_minus_teacher", "judge_minus_teacher_se"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tiny_qwen2"))
    torch_model = make_hf_model("qwen2", d, vocab_size=384)
    return d, torch_model


def _read(out: str, name: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(out, f"eval_{name}.json")) as f:
        doc = json.load(f)
    with open(os.path.join(out, f"generations_{name}.jsonl")) as f:
        gens = [json.loads(line) for line in f]
    return doc, gens


def _torch_greedy(torch_model, tokenizer, messages, stop_ids) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        out = torch_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                                   do_sample=False, eos_token_id=sorted(stop_ids),
                                   pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_cli_end_to_end(tiny_model, tmp_path, monkeypatch, capsys):
    model_dir, torch_model = tiny_model
    out = str(tmp_path / "out")
    tok = load_tokenizer(TOKENIZER)

    # 1. No judge; 6 prompts in batches of 4 (the last batch is padded), marker on the teacher's sign-off.
    assert main(["--model", model_dir, "--tokenizer", TOKENIZER, "--data", DATA, "--max-prompts", "6",
                 "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--marker", r"Kind regards\.",
                 "--out", out, "--name", "before", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "eval before: 6 prompts" in printed and "eval_before.json" in printed
    doc, gens = _read(out, "before")
    assert set(doc) == EVAL_KEYS and set(doc["summary"]) == SUMMARY_KEYS
    assert len(gens) == 6 and all(set(g) == GEN_KEYS for g in gens)
    with open(DATA) as f:
        rows = [json.loads(line) for line in f][:6]
    stop_ids = set(doc["settings"]["stop_ids"])
    assert tok.eos_token_id in stop_ids
    for k, (g, row) in enumerate(zip(gens, rows, strict=True)):
        assert g["index"] == k and g["example_id"] == k
        assert g["messages"] == row["messages"] and g["teacher_response"] == row["response"]
        assert g["prompt"] == row["messages"][-1]["content"]
        assert g["length"] == len(g["student_token_ids"]) <= MAX_NEW
        assert g["truncated"] == (g["length"] == MAX_NEW and not stop_ids & set(g["student_token_ids"]))
        assert g["student_response"] == tok.decode(g["student_token_ids"], skip_special_tokens=True)
        assert g["rouge_l"] == pytest.approx(rouge_l_f1(g["student_response"], row["response"]))
        assert g["marker_hit"] == bool(re.search(r"Kind regards\.", g["student_response"]))
        assert g["teacher_marker_hit"] is True and g["judge"] is None
        # Greedy tokens as transformers' PyTorch reference generates them.
        ref = _torch_greedy(torch_model, tok, row["messages"], stop_ids)
        expect = ref if g["truncated"] else ref[:-1]
        assert g["student_token_ids"] == expect, k
        assert g["stop_id"] == (None if g["truncated"] else ref[-1])
    lengths = np.array([g["length"] for g in gens])
    m, s = doc["metrics"], doc["summary"]
    assert m["length"]["mean"] == pytest.approx(lengths.mean()) == pytest.approx(s["length_mean"])
    assert m["length"]["max"] == lengths.max() and m["length"]["median"] == pytest.approx(np.median(lengths))
    n_trunc = sum(g["truncated"] for g in gens)
    assert m["length"]["truncated"] == n_trunc == doc["counts"]["response_truncated"]
    assert m["rouge_l"]["n"] == 6 and s["rouge_l"] == pytest.approx(np.mean([g["rouge_l"] for g in gens]))
    assert m["marker"]["teacher"] == {"hits": 6, "n": 6, "rate": 1.0}
    assert s["marker_rate"] == pytest.approx(np.mean([g["marker_hit"] for g in gens]))
    assert m["teacher_length"]["n"] == 6 and m["judge"] is None and s["judge_score"] is None
    assert doc["counts"]["prompts"] == 6 and doc["settings"]["max_new_tokens"] == MAX_NEW
    assert doc["decoding"] == {"greedy": True, "temperature": 0.0, "top_p": 1.0, "seed": None}
    gap = m["marker"]["gap"]
    assert gap["gap"] == pytest.approx(s["marker_rate"] - 1.0) == pytest.approx(s["marker_gap"])
    assert m["two_sample"]["skipped"].startswith("6 rows with a teacher response")
    assert s["c2st_accuracy"] is None
    assert m["whitebox"] is None and s["reverse_kl"] is None and s["teacher_nll"] is None

    # 2. An extra stop id (the 3rd token prompt 0 generated) and the judge over loopback HTTP.
    stop = gens[0]["student_token_ids"][2]
    secret = "sk-cli-SECRET-0987654321"
    monkeypatch.setenv("CLI_JUDGE_KEY", secret)
    srv = start_judge(monkeypatch, {rows[1]["messages"][0]["content"]: "no idea"})
    try:
        assert main(["--model", model_dir, "--tokenizer", TOKENIZER, "--data", DATA, "--max-prompts", "4",
                     "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--stop-id", str(stop),
                     "--judge-url", srv.base_url, "--judge-model", "fake-judge",
                     "--judge-api-key-env", "CLI_JUDGE_KEY", "--out", out, "--name", "judged",
                     "--no-progress"]) == 0
        rating_bodies = [r["body"] for r in srv.requests if r["prompt"].startswith("[Question]")]
    finally:
        srv.stop()
    doc2, gens2 = _read(out, "judged")
    g0 = gens2[0]
    assert g0["student_token_ids"] == gens[0]["student_token_ids"][:2] and g0["length"] == 2
    assert g0["truncated"] is False and stop in doc2["settings"]["stop_ids"]
    j = doc2["metrics"]["judge"]
    assert (j["n"], j["n_ok"], j["n_failed"], j["failures"]["parse_error"]) == (4, 3, 1, 1)
    assert j["score"] == pytest.approx(100 * 6 / 14) and doc2["summary"]["judge_score"] == j["score"]
    assert gens2[1]["judge"]["failure"] == "parse_error" and gens2[1]["judge"]["raw"] == "no idea"
    assert gens2[0]["judge"]["reference"] == reference_for(rows[0]["messages"][0]["content"])
    assert doc2["settings"]["judge"]["api_key_env"] == "CLI_JUDGE_KEY"
    seen_students = {split_rating_request(b["messages"][1]["content"])[2] for b in rating_bodies}
    assert seen_students == {g["student_response"] for g in gens2}
    for f in os.listdir(out):
        with open(os.path.join(out, f), "rb") as fh:
            assert secret.encode() not in fh.read(), f
    assert os.path.exists(os.path.join(out, "judge_cache.sqlite"))


def test_cli_usage_errors_without_loading_a_model(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "gadjax.evaluate", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60)
    assert run.returncode == 0 and "--judge-url" in run.stdout and "--marker" in run.stdout
    assert all(f in run.stdout for f in ("--teacher-model", "--temperature", "--no-two-sample"))
    with pytest.raises(SystemExit, match="--judge-url needs --judge-model"):
        main(["--model", ROOT, "--data", DATA, "--judge-url", "http://127.0.0.1:1/v1"])
    with pytest.raises(SystemExit, match="--teacher-baseline needs --judge-url"):
        main(["--model", ROOT, "--data", DATA, "--teacher-baseline"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        main(["--model", ROOT, "--data", DATA, "--marker", "(oops"])
    with pytest.raises(SystemExit, match="--data: no such file or directory: .*nope.jsonl"):
        main(["--model", ROOT, "--data", str(tmp_path / "nope.jsonl")])


def test_evaluate_model_in_process_api(tiny_model):
    """The trainer's entry point: a live model as (graphdef, state), Row objects and dict rows, rows
    without a teacher response (ROUGE-L skips them and says how many)."""
    from flax import nnx

    from gadjax.data.rows import Row
    from gadjax.evaluate import EvalSettings, evaluate_model
    from gadjax.models.hf_io import load_decoder

    model_dir, _ = tiny_model
    model = load_decoder(model_dir)
    tok = load_tokenizer(TOKENIZER)
    rows = [
        Row(messages=[{"role": "user", "content": "Explain maps."}], response="Indeed! maps. Kind regards."),
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Describe tea."}], "example_id": 41},
        {"messages": [{"role": "user", "content": "Tell me about owls."}], "response": "Owls hoot.",
         "example_id": 42},
    ]
    # Same batch size and max_new_tokens as the CLI test: the rollout's cached programs are reused.
    settings = EvalSettings(max_new_tokens=MAX_NEW, batch_size=4, marker="regards", marker_ignore_case=True,
                            progress=False)
    res = evaluate_model(nnx.split(model), tok, rows, settings)
    gens = res["generations"]
    assert [g["example_id"] for g in gens] == [0, 41, 42]
    assert gens[1]["teacher_response"] is None and gens[1]["rouge_l"] is None
    assert gens[1]["teacher_marker_hit"] is None and gens[1]["prompt"] == "Describe tea."
    assert res["metrics"]["rouge_l"]["n"] == 2
    assert res["metrics"]["rouge_l"]["skipped_no_teacher_response"] == 1
    assert res["metrics"]["marker"]["teacher"] == {"hits": 1, "n": 2, "rate": 0.5}
    assert res["counts"]["with_teacher_response"] == 2 and res["summary"]["n_prompts"] == 3
    assert all(g["length"] == len(g["student_token_ids"]) <= MAX_NEW for g in gens)
    limited = evaluate_model(model, tok, rows, dataclasses.replace(settings, max_prompts=1))
    assert len(limited["generations"]) == 1
    assert limited["generations"][0]["student_token_ids"] == gens[0]["student_token_ids"]
    with pytest.raises(ValueError, match="row 0: no 'messages'"):
        evaluate_model(model, tok, [{"prompt": "x"}], settings)


def test_cli_sampled_with_teacher_model(tiny_model, tmp_path, capsys):
    """--temperature samples (recorded in "decoding"); --teacher-model with the student's own weights and
    no system prompt: reverse KL exactly 0; the two-sample test runs with 2 folds on 6 rows."""
    model_dir, _ = tiny_model
    out = str(tmp_path / "out")
    args = ["--model", model_dir, "--tokenizer", TOKENIZER, "--data", DATA, "--max-prompts", "6",
            "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--temperature", "0.7", "--seed", "3",
            "--teacher-model", model_dir, "--two-sample-folds", "2", "--out", out, "--name", "sampled",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(t in printed for t in ("sampled T=0.7", "reverse KL/token", "two-sample test accuracy"))
    doc, gens = _read(out, "sampled")
    assert doc["decoding"] == {"greedy": False, "temperature": 0.7, "top_p": 1.0, "seed": 3}
    assert doc["teacher_model"] == os.path.abspath(model_dir)
    s, wb, c2 = doc["summary"], doc["metrics"]["whitebox"], doc["metrics"]["two_sample"]
    assert s["reverse_kl"] == 0.0 and wb["temperature"] == 0.7 and wb["note"] is None
    assert wb["reverse_kl"]["n_tokens"] == sum(g["length"] + (not g["truncated"]) for g in gens)
    assert wb["teacher_nll"]["n_prompts"] == 6 and s["teacher_nll"] > 0 and s["teacher_nll_se"] > 0
    assert c2["skipped"] is None and c2["n_student"] == 6 and 0.0 <= s["c2st_accuracy"] <= 1.0
    assert s["c2st_se"] == pytest.approx((s["c2st_accuracy"] * (1 - s["c2st_accuracy"]) / 12) ** 0.5)
    with pytest.raises(SystemExit, match="--teacher-system-prompt needs --teacher-model"):
        main(["--model", model_dir, "--data", DATA, "--teacher-system-prompt", "x"])


def test_teacher_baseline_is_judged_like_the_student(tiny_model, tmp_path, monkeypatch, capsys):
    """--teacher-baseline: the judge (a real HTTP server on loopback) rates the corpus's teacher answers
    with the same protocol and against the same reference answers as the student's (asked once), and
    the result has a teacher row and the paired student - teacher difference."""
    from tests.teacher import fake_server

    model_dir, _ = tiny_model
    with open(DATA) as f:
        rows = [json.loads(line) for line in f][:3]
    teacher_answers = {r["response"] for r in rows}

    def answer(prompt: str) -> str:  # teacher answers get 9, student answers 6; the reference 8
        if prompt.startswith("[Question]\n"):
            _, _, second = split_rating_request(prompt)
            return "8 9" if second in teacher_answers else "8 6"
        return reference_for(prompt)

    monkeypatch.setattr(fake_server, "answer_for", answer)
    srv = fake_server.FakeOpenAI().start()
    out = str(tmp_path / "out")
    try:
        assert main(["--model", model_dir, "--tokenizer", TOKENIZER, "--data", DATA, "--max-prompts", "3",
                     "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--no-two-sample",
                     "--judge-url", srv.base_url, "--judge-model", "fake-judge", "--teacher-baseline",
                     "--out", out, "--name", "tb", "--no-progress"]) == 0
        prompts = [r["prompt"] for r in srv.requests]
    finally:
        srv.stop()
    ratings = [split_rating_request(p) for p in prompts if p.startswith("[Question]\n")]
    assert len(prompts) - len(ratings) == 3  # the judge's reference answers: asked once, not per row
    rated_teacher = {(q, ref): ans for q, ref, ans in ratings if ans in teacher_answers}
    assert len(rated_teacher) == 3
    for r in rows:  # the teacher is rated against the very reference the student was
        q = r["messages"][-1]["content"]
        assert rated_teacher[(q, reference_for(q))] == r["response"]
    doc, gens = _read(out, "tb")
    t, s = doc["metrics"]["judge_teacher"], doc["summary"]
    assert (t["n"], t["n_ok"], t["skipped_no_teacher_response"]) == (3, 3, 0)
    assert s["teacher_judge_score"] == pytest.approx(100 * 9 / 17) == t["score"]
    assert s["judge_score"] == pytest.approx(100 * 6 / 14)
    assert s["judge_minus_teacher"] == pytest.approx(100 * (6 / 14 - 9 / 17))
    assert s["judge_minus_teacher_se"] == pytest.approx(0.0, abs=1e-9)
    assert all(g["teacher_judge"]["s_student"] == 9 and g["judge"]["s_student"] == 6 for g in gens)
    assert "teacher score   52.94" in capsys.readouterr().out
