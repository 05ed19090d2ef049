"""Distribution-matching metrics: marker gap, the classifier two-sample test, the white-box reverse KL
(against an exact enumeration on a tiny model), teacher NLL, and sampled generation."""

from __future__ import annotations

import itertools
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp

from gadjax.eval.distribution import marker_gap, two_sample_test
from gadjax.eval.generation import generate_responses
from gadjax.eval.whitebox import response_logprobs, teacher_view, token_log_ratios, token_metrics
from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder
from gadjax.models.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "configs", "tiny_assets", "tokenizer")

EN = "the a cat dog house river runs sleeps sees green small old near under with and".split()
FR = "le la chat chien maison rivière court dort voit vert petit vieux près sous avec et".split()


def _sentences(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(words, size=rng.integers(5, 12))) for _ in range(n)]


# --------------------------------------------------------------------------------------- marker gap
def test_marker_gap_matches_numpy():
    s = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0], bool)
    t = np.array([1, 1, 1, 0, 1, 1], bool)
    g = marker_gap(list(s), list(t))
    ps, pt = s.mean(), t.mean()
    assert g["student_rate"] == pytest.approx(0.4) and g["teacher_rate"] == pytest.approx(5 / 6)
    assert g["gap"] == pytest.approx(ps - pt) and g["abs_gap"] == pytest.approx(abs(ps - pt))
    assert g["se"] == pytest.approx(np.sqrt(ps * (1 - ps) / s.size + pt * (1 - pt) / t.size))
    assert (g["n_student"], g["n_teacher"]) == (10, 6)
    empty = marker_gap([True], [])
    assert empty["gap"] is None and empty["se"] is None and empty["n_teacher"] == 0


# ----------------------------------------------------------------------------- two-sample test (C2ST)
def test_two_sample_separable_and_same_distribution():
    rng = np.random.default_rng(0)
    en, fr = _sentences(EN, 60, rng), _sentences(FR, 60, rng)
    sep = two_sample_test(en, fr, folds=5, seed=0)
    assert sep["accuracy"] >= 0.95 and sep["auc"] >= 0.95 and sep["p_value"] < 1e-10
    assert (sep["n_student"], sep["n_teacher"], sep["folds"]) == (60, 60, 5)
    acc, n = sep["accuracy"], 120
    assert sep["se"] == pytest.approx(math.sqrt(acc * (1 - acc) / n))
    assert sep["n_correct"] == round(acc * n)

    # One distribution: chance accuracy. Three independent replicates (held-out accuracy of 120 texts
    # under the null spreads ~0.07, wider than the binomial se: cross-validated predictions correlate).
    accs = []
    for data_seed in range(3):
        r = np.random.default_rng(data_seed)
        a, b = _sentences(EN, 60, r), _sentences(EN, 60, r)
        same = two_sample_test(a, b, folds=5, seed=0)
        assert abs(same["accuracy"] - 0.5) <= 0.15 and same["p_value"] > 0.01, same
        assert same["se"] == pytest.approx(math.sqrt(same["accuracy"] * (1 - same["accuracy"]) / 120))
        accs.append(same["accuracy"])
    assert abs(np.mean(accs) - 0.5) <= 0.07
    assert two_sample_test(a, b, folds=5, seed=0) == same  # deterministic


def test_two_sample_balancing_empty_texts_and_too_few():
    rng = np.random.default_rng(1)
    en, fr = _sentences(EN, 30, rng), _sentences(FR, 12, rng)
    res = two_sample_test(en, fr, folds=3, seed=3)
    assert (res["n_student"], res["n_teacher"]) == (12, 12)
    assert res["balanced"]["student_given"] == 30 and res["balanced"]["subsampled"] == "student"
    # Empty texts are texts: all-empty on both sides is a valid (indistinguishable) input, and empty vs
    # non-empty is separable.
    assert two_sample_test([""] * 10, [""] * 10, folds=2)["accuracy"] == pytest.approx(0.5)
    assert two_sample_test([""] * 10, en[:10], folds=2)["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"9 student and 42 teacher texts; need >= 10 of each for 5 folds"):
        two_sample_test(en[:9], en + fr, folds=5)


# ------------------------------------------------------------------------------ white-box reverse KL
V = 8
TINY = ModelConfig(
    model_type="qwen2", vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=True,
)


def _sharp_model(seed: int, cfg: ModelConfig = TINY, scale: float = 60.0) -> Decoder:
    """A random Decoder whose next-token distributions are far from uniform (scaled LM head)."""
    m = Decoder(cfg, rngs=nnx.Rngs(seed))
    m.lm_head[...] = m.lm_head[...] * scale
    return m


def _all_logits(model: Decoder, prompt: list[int]) -> np.ndarray:
    """float64 logits [V (= y0), 2, V]: position 0 predicts y0 from the prompt, 1 predicts y1 after y0."""
    ids = jnp.asarray([prompt + [y0] for y0 in range(V)], jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    hidden, _ = nnx.jit(lambda m, i, p: m(i, p, jnp.ones_like(i)))(model, ids, pos)
    return np.asarray(model.logits(hidden), np.float64)[:, -2:]


def _log_softmax(logits: np.ndarray, t: float) -> np.ndarray:
    x = logits / t
    return x - logsumexp(x, axis=-1, keepdims=True)


def _exact(ls: np.ndarray, lt: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token log-ratios [V, V, 2] of every y = (y0, y1) and p_s(y) [V, V], at temperature t."""
    s, te = _log_softmax(ls, t), _log_softmax(lt, t)
    y0 = np.arange(V)[:, None]
    y1 = np.arange(V)[None, :]
    s0, s1 = s[y0, 0, y0], s[y0, 1, y1]  # [V, 1], [V, V]
    t0, t1 = te[y0, 0, y0], te[y0, 1, y1]
    ratio = np.stack(np.broadcast_arrays(s0 - t0, s1 - t1), axis=-1)
    return ratio, np.exp(s0 + s1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reverse_kl_estimator_matches_exact_enumeration(temperature):
    student, teacher = _sharp_model(0), _sharp_model(1)
    # Two student prompts and two (longer, "system prompt") teacher prompts of different lengths, so
    # batches mix left-padding; every 2-token continuation y in V^2 under each.
    prompts = [([3, 5, 1], [7, 2, 6, 3, 5, 1]), ([4, 2], [7, 2, 6, 4, 2])]
    seqs = list(itertools.product(range(V), repeat=2))
    rows = [(sp, tp, list(y)) for sp, tp in prompts for y in seqs]
    ratios = token_log_ratios(
        student, teacher, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        temperature=temperature, batch_size=16,
    )
    wrong_t = 1.0 if temperature != 1.0 else 0.5
    for p_idx, (sp, tp) in enumerate(prompts):
        ls, lt = _all_logits(student, sp), _all_logits(teacher, tp)
        ref, p_s = _exact(ls, lt, temperature)
        got = np.stack(ratios[p_idx * V * V : (p_idx + 1) * V * V]).reshape(V, V, 2)
        np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
        # The exact sequence KL over all of V^2 equals the p_s-weighted sum of the estimator.
        s, te = _log_softmax(ls, temperature), _log_softmax(lt, temperature)
        p0 = np.exp(s[0, 0])  # first-token distribution (the same for every y0 row)
        kl0 = np.sum(p0 * (s[0, 0] - te[0, 0]))
        kl1 = sum(p0[a] * np.sum(np.exp(s[a, 1]) * (s[a, 1] - te[a, 1])) for a in range(V))
        exact_kl = kl0 + kl1
        assert p_s.sum() == pytest.approx(1.0, abs=1e-9)
        assert exact_kl > 0.05  # far from uniform: the controls below can fail
        assert np.sum(p_s * got.sum(-1)) == pytest.approx(exact_kl, rel=1e-3, abs=1e-4)
        # Negative controls: a wrong temperature, or log-probs read one position late, are far off.
        bad_t, _ = _exact(ls, lt, wrong_t)
        assert np.abs(bad_t - got).max() > 0.05
        late = np.stack(np.broadcast_arrays(ref[..., 1], ref[..., 1]), -1)
        assert np.abs(late - got).max() > 0.05


def test_response_logprobs_validates():
    m = _sharp_model(0)
    with pytest.raises(ValueError, match="temperature"):
        response_logprobs(m, [[1]], [[2]], temperature=0.0)
    with pytest.raises(ValueError, match="empty prompt"):
        response_logprobs(m, [[]], [[2]])
    assert response_logprobs(m, [[1, 2]], [[]])[0].shape == (0,)


# --------------------------------------------------------------- token_metrics with a chat template
CHAT_CFG = ModelConfig(
    model_type="qwen2", vocab_size=384, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
    num_kv_heads=1, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=True,
)
CHATS = [
    [{"role": "user", "content": "Explain maps."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe tea."}],
    [{"role": "user", "content": "Tell me about owls."}],
]


@pytest.fixture(scope="module")
def chat_setup():
    return load_tokenizer(TOKENIZER), _sharp_model(0, CHAT_CFG, 10.0), _sharp_model(1, CHAT_CFG, 10.0)


def test_teacher_view_merges_the_hidden_prompt_into_the_system_message():
    assert teacher_view(CHATS[1], "Persona.") == [
        {"role": "system", "content": "Persona.\n\nBe brief."}, {"role": "user", "content": "Describe tea."}
    ]
    assert teacher_view(CHATS[1], None) == CHATS[1]


def test_token_metrics(chat_setup):
    tok, student, teacher = chat_setup
    eos = tok.eos_token_id
    ids = [[10, 11, 12], [13], [14, 15]]
    stops = [eos, None, eos]  # row 1 truncated: nothing appended
    texts = ["Indeed! maps.", None, "Owls hoot."]
    same = token_metrics(student, student, tok, CHATS, ids, texts, student_stop_ids=stops, temperature=0.7)
    kl = same["reverse_kl"]
    assert kl["mean"] == 0.0 and kl["n_prompts"] == 3 and kl["n_tokens"] == 4 + 1 + 3
    assert same["temperature"] == 0.7 and same["teacher_system_prompt"] is False
    # teacher NLL by hand: the student's log-probs of tokenized teacher text + EOS, on its own prompt.
    nll = same["teacher_nll"]
    assert nll["n_prompts"] == 2 and nll["per_prompt"][1] is None and nll["truncated"] == 0
    for k in (0, 2):
        prompt = tok.encode(tok.apply_chat_template(CHATS[k], add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)
        resp = tok.encode(texts[k], add_special_tokens=False) + [eos]
        lp = response_logprobs(student, [prompt], [resp])[0]
        assert nll["per_prompt"][k] == pytest.approx(-lp.mean(), rel=1e-5)
    two = [nll["per_prompt"][0], nll["per_prompt"][2]]
    assert nll["mean"] == pytest.approx(np.mean(two))
    assert nll["se"] == pytest.approx(np.std(two, ddof=1) / np.sqrt(2))

    # The teacher's hidden system prompt changes its view: the same weights no longer agree.
    persona = token_metrics(student, student, tok, CHATS, ids, texts, student_stop_ids=stops,
                            teacher_system_prompt="Always answer in French.")
    assert persona["reverse_kl"]["mean"] != 0.0 and persona["teacher_system_prompt"] is True
    other = token_metrics(student, teacher, tok, CHATS, ids, texts, student_stop_ids=stops)
    r = other["reverse_kl"]["per_prompt"]
    assert other["reverse_kl"]["se"] == pytest.approx(np.std(r, ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="must match"):
        token_metrics(student, teacher, tok, CHATS, ids[:2], texts)


# ------------------------------------------------------------------------------- sampled generation
def test_sampled_generation_deterministic_per_seed(chat_setup):
    tok, _, _ = chat_setup
    model = nnx.split(Decoder(CHAT_CFG, rngs=nnx.Rngs(3)))  # near-uniform logits: samples vary a lot
    kw = dict(max_new_tokens=6, batch_size=2, max_prompt_tokens=64, progress=False)

    def toks(**extra):
        return [g.token_ids + ([g.stop_id] if g.stop_id is not None else []) for g in
                generate_responses(model, tok, CHATS, **kw, **extra)]

    greedy = toks()
    assert toks(seed=5) == greedy  # greedy ignores the seed
    # A very low temperature samples the argmax: the greedy tokens.
    assert toks(temperature=1e-4, seed=1) == greedy
    a, b, c = toks(temperature=1.0, seed=0), toks(temperature=1.0, seed=0), toks(temperature=1.0, seed=1)
    assert a == b and a != c and a != greedy
    with pytest.raises(ValueError, match="temperature"):
        generate_responses(model, tok, CHATS, temperature=-1.0, **kw)
