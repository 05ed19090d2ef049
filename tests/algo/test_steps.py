"""Train steps: learning signs, micro-batch equivalence, the non-finite guard, 1 vs 8 devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gadjax.algo.optim import make_optimizer
from gadjax.algo.steps import (
    PolicyLossConfig,
    TrainState,
    make_discriminator_step,
    make_logprob_fn,
    make_policy_step,
    make_sft_step,
)
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator
from tests.tiny_models import tiny_model_config

CFG = tiny_model_config(model_type="qwen2", vocab_size=64, attention_bias=True)
B, N, P, R = 4, 2, 6, 5


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    prompt = rng.randint(1, 64, (B, P))
    pmask = np.ones((B, P), np.int32)
    pmask[1, :3] = 0
    pmask[3, :1] = 0
    resp = rng.randint(1, 64, (B, R))
    rmask = np.ones((B, R), np.int32)
    rmask[0, 3:] = 0
    rmask[2, 1:] = 0
    student = rng.randint(1, 64, (B * N, R))
    smask = np.ones((B * N, R), np.int32)
    smask[1, 2:] = 0
    smask[6, 4:] = 0
    return {
        k: jnp.asarray(v)
        for k, v in dict(
            prompt_ids=prompt * pmask,
            prompt_mask=pmask,
            response_ids=resp * rmask,
            response_mask=rmask,
            student_ids=student * smask,
            student_mask=smask,
        ).items()
    }


def _state(module, lr=1e-2):
    graphdef, params = nnx.split(module, nnx.Param)
    opt = make_optimizer(lr, grad_clip_norm=1.0, weight_decay=0.0)
    return graphdef, opt, TrainState.create(params, opt)


def _policy_batch(batch, adv):
    rep = lambda x: jnp.repeat(x, N, axis=0)
    return dict(
        prompt_ids=rep(batch["prompt_ids"]),
        prompt_mask=rep(batch["prompt_mask"]),
        response_ids=batch["student_ids"],
        response_mask=batch["student_mask"],
        advantages=adv,
    )


def test_sft_step_lowers_the_loss():
    graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    step = jax.jit(make_sft_step(graphdef, opt))
    batch = _batch()
    losses = []
    for _ in range(5):
        state, m = step(state, batch, jax.random.key(0))
        losses.append(float(m["sft_loss"]))
    assert losses[-1] < losses[0] - 0.1
    assert int(state.step) == 5


def test_micro_batches_give_the_same_update():
    batch = _batch()
    results = []
    for micro in (1, 2):
        graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
        state, m = jax.jit(make_sft_step(graphdef, opt, micro_batches=micro))(state, batch, jax.random.key(0))
        results.append((float(m["loss"]), float(m["grad_norm"]), state.params))
    assert abs(results[0][0] - results[1][0]) < 1e-6
    assert abs(results[0][1] - results[1][1]) < 1e-5
    for a, b in zip(jax.tree.leaves(results[0][2]), jax.tree.leaves(results[1][2]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_discriminator_step_separates_teacher_from_student_and_returns_pre_update_scores():
    disc = Discriminator(CFG, rngs=nnx.Rngs(1))
    graphdef, opt, state = _state(disc, lr=3e-3)
    step = jax.jit(make_discriminator_step(graphdef, opt, n_samples=N))
    batch = _batch()
    pre = np.asarray(jax.jit(lambda p: _scores(graphdef, p, batch))(state.params))
    state, m0 = step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(m0["student_scores"]), pre, rtol=1e-5, atol=1e-6)
    for _ in range(15):
        state, m = step(state, batch, jax.random.key(0))
    assert float(m["d_loss"]) < float(m0["d_loss"])
    assert float(m["d_acc"]) == 1.0
    assert float(m["teacher_score_mean"]) > float(m["student_score_mean"])
    # Micro-batched D step: same loss and same per-row scores.
    graphdef2, opt2, state2 = _state(Discriminator(CFG, rngs=nnx.Rngs(1)), lr=3e-3)
    _, m2 = jax.jit(make_discriminator_step(graphdef2, opt2, n_samples=N, micro_batches=2))(
        state2, batch, jax.random.key(0)
    )
    np.testing.assert_allclose(float(m2["d_loss"]), float(m0["d_loss"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m2["student_scores"]), pre, rtol=1e-5, atol=1e-6)


def _scores(graphdef, params, batch):
    from gadjax.algo.steps import sequence_scores

    model = nnx.merge(graphdef, params)
    rep = lambda x: jnp.repeat(x, N, axis=0)
    return sequence_scores(
        model,
        rep(batch["prompt_ids"]),
        rep(batch["prompt_mask"]),
        batch["student_ids"],
        batch["student_mask"],
    )


def test_policy_step_raises_logprob_of_positive_advantage_samples():
    graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)), lr=1e-2)
    batch = _batch()
    adv = jnp.asarray([1.0, -1.0] * B)
    logprob = jax.jit(make_logprob_fn(graphdef))
    pb = _policy_batch(batch, adv)
    ref = logprob(state.params, pb)
    pb["ref_logprobs"] = ref
    step = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig()))
    state, m = step(state, pb, jax.random.key(0))
    assert abs(float(m["kl_loss"])) < 1e-7  # policy == reference at the first step
    assert float(m["pg_clipfrac"]) == 0.0  # ratio is 1 with one update per rollout
    after = logprob(state.params, pb)
    mask = np.asarray(pb["response_mask"]).astype(bool)
    gain = (np.asarray(after) - np.asarray(ref)) * mask
    per_seq = gain.sum(1) / mask.sum(1)
    assert per_seq[0::2].mean() > 0 > per_seq[1::2].mean()


def test_non_finite_batch_is_skipped_and_reported():
    graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    batch = _batch()
    pb = _policy_batch(batch, jnp.asarray([1.0, jnp.nan] + [0.0] * (2 * B - 2)))
    pb["ref_logprobs"] = jax.jit(make_logprob_fn(graphdef))(state.params, pb)
    before = jax.tree.map(np.asarray, state.params)
    new, m = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig()))(state, pb, jax.random.key(0))
    assert float(m["skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("kind", ["sft", "disc"])
def test_eight_device_mesh_matches_one_device(kind):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Pspec

    from gadjax.models.sharding import state_shardings
    from gadjax.parallel.mesh import make_mesh
    from gadjax.parallel.rules import use_mesh

    batch = _batch()
    module = Decoder(CFG, rngs=nnx.Rngs(0)) if kind == "sft" else Discriminator(CFG, rngs=nnx.Rngs(0))
    graphdef, opt, state = _state(module)
    make = (
        (lambda g, o: make_sft_step(g, o))
        if kind == "sft"
        else (lambda g, o: make_discriminator_step(g, o, n_samples=N))
    )
    _, ref = jax.jit(make(graphdef, opt))(state, batch, jax.random.key(0))

    mesh = make_mesh((2, 2, 2))
    params = jax.device_put(state.params, state_shardings(state.params, mesh))
    sharded = TrainState.create(params, opt)
    row = NamedSharding(mesh, Pspec(("data", "fsdp")))
    sbatch = {k: jax.device_put(v, row) for k, v in batch.items()}
    with use_mesh(mesh):
        _, got = jax.jit(make(graphdef, opt))(sharded, sbatch, jax.random.key(0))
    np.testing.assert_allclose(float(got["loss"]), float(ref["loss"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(got["grad_norm"]), float(ref["grad_norm"]), rtol=1e-5)


def test_micro_batched_reference_logprobs_equal_one_pass():
    graphdef, _, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    batch = _policy_batch(_batch(), jnp.zeros((B * N,)))
    one = jax.jit(make_logprob_fn(graphdef))(state.params, batch)
    four = jax.jit(make_logprob_fn(graphdef, micro_batches=4))(state.params, batch)
    np.testing.assert_allclose(np.asarray(four), np.asarray(one), rtol=1e-6, atol=1e-6)


def _np_response_logprobs(model, pb, temperature):
    """float64 numpy reference: log softmax(logits / T) at the response tokens, from the full logits."""
    from gadjax.algo.steps import concat_sequence

    ids, mask, pos = concat_sequence(
        pb["prompt_ids"], pb["prompt_mask"], pb["response_ids"], pb["response_mask"]
    )
    hidden, _ = model(ids, pos, mask)
    logits = np.asarray(hidden, np.float64) @ np.asarray(model.output_embedding(), np.float64)
    z = logits[:, P - 1 : P - 1 + R] / temperature  # column j predicts token j + 1
    z = z - z.max(-1, keepdims=True)
    logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tgt = np.asarray(pb["response_ids"])
    logp = np.take_along_axis(logp_all, tgt[..., None], -1)[..., 0]
    entropy = -(np.exp(logp_all) * logp_all).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("temperature", [0.8, 1.3])
def test_reference_and_policy_logprobs_use_the_rollout_temperature(temperature):
    """SPEC.md "Temperature": reference and current log-probs of the policy update are those of
    softmax(logits / T_rollout), checked against numpy; a T=1 reference is then a different policy."""
    module = Decoder(CFG, rngs=nnx.Rngs(0))
    graphdef, opt, state = _state(module)
    pb = _policy_batch(_batch(), jnp.asarray([1.0, -1.0] * B))
    ref_t = jax.jit(make_logprob_fn(graphdef, temperature=temperature))(state.params, pb)
    want, want_ent = _np_response_logprobs(module, pb, temperature)
    mask = np.asarray(pb["response_mask"]).astype(bool)
    np.testing.assert_allclose(np.asarray(ref_t)[mask], want[mask], atol=2e-5, rtol=1e-5)

    step = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig(), temperature=temperature))
    _, m = step(state, dict(pb, ref_logprobs=ref_t), jax.random.key(0))
    assert abs(float(m["kl_loss"])) < 1e-6  # current == reference: both at T
    np.testing.assert_allclose(float(m["entropy"]), want_ent[mask].mean(), rtol=1e-4)
    ref_1 = jax.jit(make_logprob_fn(graphdef))(state.params, pb)
    _, m1 = step(state, dict(pb, ref_logprobs=ref_1), jax.random.key(0))
    assert float(m1["kl_loss"]) > 1e-4  # a T=1 reference is not the sampled distribution


def test_frozen_discriminator_scores_without_training():
    """update=False (the off-policy ablation): same loss, accuracy and pre-update scores as a training
    step, and the state comes back bitwise unchanged."""
    disc = Discriminator(CFG, rngs=nnx.Rngs(1))
    graphdef, opt, state = _state(disc)
    batch = _batch()
    before = jax.tree.map(np.asarray, state.params)
    frozen, mf = jax.jit(make_discriminator_step(graphdef, opt, n_samples=N, update=False))(
        state, batch, jax.random.key(0)
    )
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(frozen.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert int(frozen.step) == 0
    trained, mt = jax.jit(make_discriminator_step(graphdef, opt, n_samples=N))(
        state, batch, jax.random.key(0)
    )
    np.testing.assert_allclose(np.asarray(mf["student_scores"]), np.asarray(mt["student_scores"]), atol=1e-6)
    for k in ("d_loss", "d_acc", "teacher_score_mean", "student_score_mean"):
        np.testing.assert_allclose(float(mf[k]), float(mt[k]), atol=1e-6, err_msg=k)


def test_materialized_projection_grads_equal_plain_autodiff():
    """The CPU backward (layers.dense, materialize_grads=True) computes the gradients autodiff does."""
    from gadjax.algo.sequences import sequence_logprobs

    batch = _batch()
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
    weights = jax.random.normal(jax.random.key(3), batch["response_ids"].shape)
    grads = {}
    for materialize in (False, True):
        graphdef, params = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0), materialize_grads=materialize), nnx.Param)

        def loss(p, graphdef=graphdef):
            logp, _ = sequence_logprobs(nnx.merge(graphdef, p), *args, chunk_size=4)
            return jnp.sum(logp * weights * batch["response_mask"])

        grads[materialize] = jax.jit(jax.grad(loss))(params)
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True]), strict=True):
        assert np.any(np.asarray(a) != 0)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_policy_step_updates_params_and_moments_in_place():
    """Donated params and optimizer state alias the step's outputs, and no copy of them is made (the
    non-finite guard once made XLA copy both moments every step)."""
    graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    batch = _batch()
    pb = _policy_batch(batch, jnp.linspace(-1.0, 1.0, 2 * B))
    pb["ref_logprobs"] = jax.jit(make_logprob_fn(graphdef))(state.params, pb)
    step = jax.jit(make_policy_step(graphdef, opt, PolicyLossConfig()), donate_argnums=(0,))
    compiled = step.lower(state, pb, jax.random.key(0)).compile()
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert compiled.memory_analysis().alias_size_in_bytes >= state_bytes
    entry = compiled.as_text().split("\nENTRY ")[1].splitlines()
    inputs = {ln.split(" = ")[0].strip() for ln in entry if " parameter(" in ln}
    copied = [ln for ln in entry if " copy(" in ln and ln.split(" copy(")[1].split(")")[0] in inputs]
    assert copied == []
