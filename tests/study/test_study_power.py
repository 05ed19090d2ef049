"""The study's power statistics (issue 27) on fixed inputs: teacher-likeness with several samples per prompt
(gadjax.demo.likeness.grouped_likeness), the held-out comparisons paired by prompt with their minimum
detectable effects (gadjax.study.report), and the teacher's extra samples (gadjax.study.runner), against
references computed here (numpy, scipy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ml_collections import ConfigDict
from scipy.stats import norm, sem, ttest_rel

from gadjax.demo.likeness import grouped_likeness
from gadjax.demo.persona import marker_hit
from gadjax.study import report

FRENCH = "Le chat est dans la maison et les enfants sont avec une amie pour le dîner."
ENGLISH = "The cat is in the house and the children are with a friend for dinner."
Z = norm.ppf(0.975) + norm.ppf(0.8)  # 2.80: the MDE per unit of SE


def test_grouped_likeness_rates_gap_and_mde_by_prompt():
    assert marker_hit(FRENCH) and not marker_hit(ENGLISH)
    rng = np.random.default_rng(0)
    prompts = 12
    # Student: prompt i answers in French with probability i / 12 over 4 samples; teacher: 3 of 4 French.
    student = [[FRENCH if rng.random() < i / prompts else ENGLISH for _ in range(4)] for i in range(prompts)]
    teacher = [[FRENCH, FRENCH, FRENCH, ENGLISH] for _ in range(prompts)]
    res = grouped_likeness(student, teacher, folds=3)
    s_rate = np.array([np.mean([t == FRENCH for t in texts]) for texts in student])
    d = s_rate - 0.75
    assert res["n"] == prompts and res["samples_student"] == res["samples_teacher"] == 4
    assert res["per_prompt"]["marker_rate"] == pytest.approx(s_rate.tolist())
    assert res["marker_rate"] == pytest.approx(s_rate.mean()) and res["teacher_marker_rate"] == 0.75
    assert res["marker_gap"] == pytest.approx(d.mean()) and res["marker_abs_gap"] == pytest.approx(
        abs(d.mean())
    )
    assert res["marker_gap_se"] == pytest.approx(sem(d))  # prompts are the unit, not the 48 texts
    assert res["marker_gap_p"] == pytest.approx(ttest_rel(s_rate, np.full(prompts, 0.75)).pvalue)
    assert res["marker_gap_mde"] == pytest.approx(Z * sem(d))
    assert res["c2st_mde"] == pytest.approx(Z * res["c2st_se"]) and 0 <= res["c2st_accuracy"] <= 1
    with pytest.raises(ValueError, match="one non-empty list"):
        grouped_likeness(student, teacher[:-1])


def _final(name, seed, rates, **extra):
    return name, {"name": name, "seed": seed, "per_prompt": {"marker_rate": list(rates)}, **extra}


def test_report_pairs_held_out_models_by_prompt_and_states_the_mde():
    rng = np.random.default_rng(1)
    rates = {(arm, s): rng.integers(0, 5, size=10) / 4 for arm in ("gad", "seqkd") for s in (0, 1)}
    finals = dict(
        _final(f"{arm}_s{s}", s, r, marker_gap=0.1, marker_gap_se=0.05, c2st_accuracy=0.6, c2st_se=0.04)
        for (arm, s), r in rates.items()
    )
    finals.update([_final("seqkd_s2", 2, rates["seqkd", 0])])  # no gad seed 2: not paired
    rows = report.prompt_paired(finals, "gad", "seqkd")
    assert [r["what"] for r in rows] == ["seed 0", "seed 1", "pooled"]
    for r, (x, y) in zip(
        rows,
        [
            (rates["gad", 0], rates["seqkd", 0]),
            (rates["gad", 1], rates["seqkd", 1]),
            ((rates["gad", 0] + rates["gad", 1]) / 2, (rates["seqkd", 0] + rates["seqkd", 1]) / 2),
        ],
        strict=True,
    ):
        assert r["n"] == 10 and r["diff"] == pytest.approx(np.mean(x - y))
        assert r["se"] == pytest.approx(sem(x - y)) and r["p_value"] == pytest.approx(ttest_rel(x, y).pvalue)
        assert r["mde"] == pytest.approx(Z * sem(x - y))
    lines = report.prompt_paired_lines(finals)
    first = next(line for line in lines if "GAD - seqkd, last step (seed 0)" in line)
    assert f"MDE {Z * sem(rates['gad', 0] - rates['seqkd', 0]):.3f}" in first
    assert f"| gad_s0 | 0.100 ± 0.050 | MDE {Z * 0.05:.3f} | 0.600 ± 0.040 | MDE {Z * 0.04:.3f} |" in lines
    # The by-seed verdicts carry the MDE of their SE too.
    for name, r in finals.items():
        r["marker_abs_gap"] = 0.1 if name.startswith("gad") else 0.2
    verdict = "\n".join(report.verdicts(finals, [], "/nonexistent"))
    assert "paired seeds; MDE" in verdict
    assert report.prompt_paired_lines({"gad_s0": {"seed": 0}})[0].startswith("No evaluation")


def test_teacher_samples_keep_the_collected_response_and_draw_with_their_own_keys(tmp_path, monkeypatch):
    import gadjax.demo.likeness as likeness
    import gadjax.models.hf_io as hf_io
    from gadjax.demo.timing import PhaseTimer
    from gadjax.study import Results
    from gadjax.study.runner import Study

    seeds = []

    def fake_sample(model, tokenizer, rows, temperature, max_new_tokens, max_prompt_tokens, batch_size, seed):
        seeds.append(seed)
        assert all(r["messages"][0]["role"] == "system" for r in rows)  # the teacher's hidden prompt
        return {"generations": [{"student_response": f"draw {seed} of {i}"} for i in range(len(rows))]}

    monkeypatch.setattr(likeness, "sample_responses", fake_sample)
    monkeypatch.setattr(hf_io, "load_decoder", lambda path: object())
    c = ConfigDict(
        {
            "study": {"eval_samples": 3, "eval_seed": 1234, "eval_batch_size": 4},
            "train": {"d_only_steps": 1},
            "demo": {"teacher_temperature": 0.7, "teacher_max_tokens": 8},
            "model": {"path": "unused"},
        }
    )
    (tmp_path / "data").mkdir()
    study = Study(
        c, str(tmp_path), Results(str(tmp_path / "results.jsonl")), PhaseTimer(str(tmp_path / "t.json"))
    )
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "response": f"collected {i}"} for i in range(2)
    ]
    out = study.teacher_samples("validation", rows)
    assert out == [[f"collected {i}", f"draw 2235 of {i}", f"draw 2236 of {i}"] for i in range(2)]
    # Never a student's keys (eval_seed + j, j < eval_samples), which the calibration row uses too.
    assert seeds == [2235, 2236]
    with open(tmp_path / "data" / "teacher_samples_validation.jsonl", encoding="utf-8") as f:
        assert [json.loads(line)["responses"] for line in f] == out
    assert study.teacher_samples("validation", rows) == out and len(seeds) == 2  # cached: no new draws


def test_likeness_eval_draws_each_sample_with_its_own_key():
    """samples=2 on a random tiny chat model: draw j uses seed + j (draw 0 is the one-sample evaluation's
    response), the teacher's texts per prompt are used as given, and prompts are the unit."""
    import os

    from flax import nnx

    from gadjax.demo.likeness import likeness_eval, sample_responses
    from gadjax.models.config import ModelConfig
    from gadjax.models.decoder import Decoder
    from gadjax.models.tokenizer import load_tokenizer

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tok = load_tokenizer(os.path.join(repo, "configs", "tiny_assets", "tokenizer"))
    cfg = ModelConfig(
        model_type="qwen2", vocab_size=384, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
        num_kv_heads=1, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=True,
    )  # fmt: skip
    model = nnx.split(Decoder(cfg, rngs=nnx.Rngs(3)))  # near-uniform logits: draws differ
    words = ("maps", "tea", "owls", "rain", "chess", "jazz")
    rows = [{"messages": [{"role": "user", "content": f"Explain {w}."}], "response": ENGLISH} for w in words]
    teacher = [[FRENCH, ENGLISH, FRENCH] for _ in rows]
    kw = dict(temperature=1.0, max_new_tokens=6, max_prompt_tokens=32, batch_size=4, seed=7)
    res = likeness_eval(model, tok, rows, folds=2, samples=2, teacher_texts=teacher, **kw)
    assert res["n"] == 6 and res["samples_student"] == 2 and res["samples_teacher"] == 3
    assert res["teacher_marker_rate"] == pytest.approx(2 / 3)
    args = (kw["temperature"], kw["max_new_tokens"], kw["max_prompt_tokens"], kw["batch_size"])
    first = [g["student_response"] for g in sample_responses(model, tok, rows, *args, 7)["generations"]]
    second = [g["student_response"] for g in sample_responses(model, tok, rows, *args, 8)["generations"]]
    assert [e["student"] for e in res["examples"]] == first[:3] and first != second
    assert [e["teacher"] for e in res["examples"]] == [FRENCH] * 3
    one = likeness_eval(model, tok, rows, folds=2, **kw)  # the demo's path: one sample per prompt
    assert "per_prompt" not in one and one["n"] == 6
