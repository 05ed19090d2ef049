"""D's accuracy on the validation split (gadjax.trainer.disc_validation): the padded layout of the pairs, the
metrics, and a real warmup run whose logged eval/disc_val_* equal a recomputation from D's own scores of
the eval rows' (teacher, student) pairs, on prompts that are not training prompts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gadjax.trainer import disc_validation as dv
from tests.trainer.train_helpers import REPO, tiny_config

# Prompts absent from configs/tiny_assets/train.jsonl (the training rows): the validation split.
EVAL_TOPICS = ("comets", "volcanoes", "glaciers", "lanterns", "violins", "deserts")


def _fake_score(batch: dict[str, np.ndarray]) -> np.ndarray:
    """A score computable from each pair alone: sum of the response ids + 1e-3 x the prompt length."""
    resp = (batch["response_ids"] * batch["response_mask"]).sum(1)
    return (resp + 1e-3 * batch["prompt_mask"].sum(1)).astype(np.float32)


def test_score_pairs_layout_and_metrics_against_numpy():
    rng = np.random.default_rng(0)
    pairs = [
        {
            "example_id": i,
            "prompt_ids": rng.integers(3, 50, size=rng.integers(1, 20)).astype(np.int32),
            "teacher_ids": rng.integers(3, 50, size=rng.integers(1, 30)).astype(np.int32),
            "student_ids": rng.integers(3, 50, size=rng.integers(1, 30)).astype(np.int32),
        }
        for i in range(7)
    ]
    seen = []

    def score(batch):
        seen.append({k: v.shape for k, v in batch.items()})
        assert (batch["prompt_mask"][:, -1] == 1).all() and (batch["response_mask"][:, 0] == 1).all()
        return _fake_score(batch)

    t, s = dv.score_pairs(
        pairs, score, rows_per_batch=4, pad_id=0, max_prompt_tokens=32, max_response_tokens=32
    )
    want_t = [p["teacher_ids"].sum() + 1e-3 * len(p["prompt_ids"]) for p in pairs]
    want_s = [p["student_ids"].sum() + 1e-3 * len(p["prompt_ids"]) for p in pairs]
    np.testing.assert_allclose(t, want_t, rtol=1e-6)
    np.testing.assert_allclose(s, want_s, rtol=1e-6)
    assert len(seen) == 4 and all(sh["prompt_ids"][0] == 4 for sh in seen)  # 14 sequences, fixed size 4
    assert all(sh["prompt_ids"][1] in (16, 32) and sh["response_ids"][1] in (16, 32) for sh in seen)

    m = dv.disc_val_metrics(np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, 2.0, 1.0, -1.0]))
    assert m["disc_val_accuracy"] == 0.5  # a tie is not a win (d_acc's strict >)
    assert m["disc_val_score_gap"] == pytest.approx(np.mean([1.0, 0.0, -0.5, 4.0]))
    assert m["disc_val_pairs"] == 4
    with pytest.raises(ValueError, match="disc_val_metrics"):
        dv.disc_val_metrics(np.zeros(2), np.zeros(3))


def test_validation_pairs_encode_the_teacher_as_training_does():
    """A teacher response its own max_tokens cut ("length") has no EOS in training (RowEncoder), so none in
    D's validation pairs either; one that ended on its own has its EOS in both."""
    from gadjax.data.tokenize import RowEncoder
    from gadjax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(REPO, "configs", "tiny_assets", "tokenizer"))
    enc = RowEncoder(tok, max_prompt_tokens=32, max_response_tokens=32)
    messages = [{"role": "user", "content": "Tell me about comets."}]
    gens = [
        {
            "example_id": i,
            "messages": messages,
            "teacher_response": "Comets are icy bodies that",
            "teacher_finish_reason": finish,
            "student_token_ids": [5, 6, 7],
            "stop_id": None,
        }
        for i, finish in enumerate(("length", "stop", None))
    ]
    pairs = dv.eval_pairs(tok, gens, max_prompt_tokens=32, max_response_tokens=32)
    for g, pair in zip(gens, pairs, strict=True):
        row = {
            "messages": messages,
            "response": g["teacher_response"],
            "finish_reason": g["teacher_finish_reason"],
        }
        trained = enc.encode_response(enc.encode_prompt(row))
        np.testing.assert_array_equal(pair["teacher_ids"], trained["response_ids"])
        np.testing.assert_array_equal(pair["prompt_ids"], trained["prompt_ids"])
    assert pairs[0]["teacher_ids"][-1] != tok.eos_token_id
    assert pairs[1]["teacher_ids"][-1] == pairs[2]["teacher_ids"][-1] == tok.eos_token_id


def test_warmup_logs_d_accuracy_on_the_validation_prompts(tmp_path):
    import jax

    from gadjax.algo.steps import make_score_fn
    from gadjax.metrics import read_metrics
    from gadjax.train import Trainer
    from gadjax.trainer import validation

    val = tmp_path / "val.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Explain {w}."}], "response": f"Indeed! {w} and tea."}
        for w in EVAL_TOPICS
    ]
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = tiny_config(
        tmp_path, stage="warmup", **{"train.steps": 1, "export.hf": False, "metrics.tensorboard": False}
    )
    c.eval.update(every=1, data=[str(val)], batch_size=4, two_sample=False)
    validation.validate(c)
    trainer = Trainer(c)
    scored: list[dict[str, np.ndarray]] = []
    real = trainer.disc_scores
    trainer.disc_scores = lambda batch: scored.append(batch) or real(batch)
    written = []  # the evaluation's generations, with the student's token ids (not written to the file)
    write = trainer.evaluator._write_generations
    trainer.evaluator._write_generations = lambda step, res: written.append(res) or write(step, res)
    trainer.run()

    (rec,) = [r for r in read_metrics(c.run_dir) if "eval/disc_val_accuracy" in r]
    (res,) = written
    gens = res["generations"]
    assert rec["eval/disc_val_pairs"] == len(gens) == len(rows)
    with open(os.path.join(c.run_dir, "eval", "step_1.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line) for line in f][1:]
    assert [g["d_teacher_score"] for g in logged] == [g["d_teacher_score"] for g in gens]

    # The scored prompts are the eval split's: each batch row's prompt is an eval prompt, none a training one.
    tok = trainer.tokenizer

    def prompt_ids(messages):
        return tuple(tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False))  # fmt: skip

    eval_prompts = {prompt_ids(r["messages"]) for r in rows}
    with open(os.path.join(REPO, "configs", "tiny_assets", "train.jsonl"), encoding="utf-8") as f:
        train_prompts = {prompt_ids(json.loads(line)["messages"]) for line in f}
    seen = {
        tuple(ids[m == 1].tolist())
        for b in scored
        for ids, m in zip(b["prompt_ids"], b["prompt_mask"], strict=True)
    }
    assert seen == eval_prompts and not seen & train_prompts

    # Recompute: D (as after the step: the evaluated one) scores every pair in one forward of its own
    # layout (each sequence padded to 32 + 32 here, not to the trainer's buckets).
    def padded(seqs, left):
        return np.stack(
            [np.pad(np.asarray(x, np.int32), (32 - len(x), 0) if left else (0, 32 - len(x))) for x in seqs]
        )

    prompts, responses = [], []
    for g in gens:
        prompts += [prompt_ids(g["messages"])] * 2
        responses.append(tok.encode(g["teacher_response"], add_special_tokens=False) + [tok.eos_token_id])
        # The student's response as a rollout carries it: its tokens and the stop token that ended it.
        responses.append(g["student_token_ids"] + ([] if g["stop_id"] is None else [g["stop_id"]]))
    batch = {"prompt_ids": padded(prompts, True), "response_ids": padded(responses, False)}
    batch["prompt_mask"] = padded([[1] * len(x) for x in prompts], True)
    batch["response_mask"] = padded([[1] * len(x) for x in responses], False)
    scores = np.asarray(jax.jit(make_score_fn(trainer.d_graphdef))(trainer.d_state.params, batch), np.float64)
    t_scores, s_scores = scores[0::2], scores[1::2]
    assert np.ptp(scores) > 0  # D separates something: the comparison below is not one of constants
    np.testing.assert_allclose([g["d_teacher_score"] for g in gens], t_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([g["d_student_score"] for g in gens], s_scores, rtol=1e-4, atol=1e-5)
    assert rec["eval/disc_val_accuracy"] == np.mean(t_scores > s_scores)
    assert rec["eval/disc_val_score_gap"] == pytest.approx(np.mean(t_scores - s_scores), rel=1e-4, abs=1e-5)
