"""Packed score and train passes equal the padded layout's (train.packing): log-probs, entropy, D scores,
every loss and its gradients, on ragged random rows, 1 device and the 8-device mesh, xla / flash / splash."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gadjax.algo import packed as PK
from gadjax.algo.kl import kl_loss
from gadjax.algo.losses import LOSS_AGG_MODES, ppo_clip_loss
from gadjax.algo.steps import (
    PolicyLossConfig,
    TrainState,
    make_discriminator_step,
    make_logprob_fn,
    make_policy_step,
    make_sft_step,
)
from gadjax.data import packing
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator
from tests.tiny_models import tiny_model_config

CFG = tiny_model_config(model_type="qwen2", vocab_size=64, attention_bias=True)
B, N, P, R = 4, 3, 7, 6
SHAPE = packing.PackShape(rows=4, length=16)  # rows: a multiple of the mesh's 4 batch shards
TOL = dict(rtol=1e-5, atol=1e-5)
CHUNK = 8  # the padded response is one chunk, a packed sequence two


def _ragged(rng, rows, width, left):
    ids = rng.randint(1, 64, (rows, width))
    lens = rng.randint(1, width + 1, rows)
    cols = np.arange(width)[None]
    mask = (cols >= width - lens[:, None]) if left else (cols < lens[:, None])
    return (ids * mask).astype(np.int32), mask.astype(np.int32)


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    p, pm = _ragged(rng, B, P, left=True)
    t, tm = _ragged(rng, B, R, left=False)
    s, sm = _ragged(rng, B * N, R, left=False)
    return dict(
        prompt_ids=p, prompt_mask=pm, response_ids=t, response_mask=tm, student_ids=s, student_mask=sm
    )


def _rows(batch):
    """The G rows: each prompt repeated N times with its samples (the rollout's layout)."""
    rep = lambda x: np.repeat(x, N, axis=0)  # noqa: E731
    return dict(
        prompt_ids=rep(batch["prompt_ids"]),
        prompt_mask=rep(batch["prompt_mask"]),
        response_ids=batch["student_ids"],
        response_mask=batch["student_mask"],
    )


def _state(module):
    graphdef, params = nnx.split(module, nnx.Param)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # params - grads: the update IS the gradient
    return graphdef, opt, TrainState.create(params, opt)


def _grads(before, after):
    return [
        np.asarray(a) - np.asarray(b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    ]


def _close_trees(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, **TOL)


def _policy_inputs(seed=0):
    batch = _batch(seed)
    rows = _rows(batch)
    rng = np.random.RandomState(seed + 1)
    adv = rng.randn(B * N).astype(np.float32)
    ref = (rng.randn(B * N, R) * 0.1 - 4.0).astype(np.float32)
    old = (rng.randn(B * N, R) * 0.3 - 4.0).astype(np.float32)
    layout, tok = packing.pack_padded(*rows.values(), SHAPE)
    padded = dict(rows, advantages=adv, ref_logprobs=ref, old_logprobs=old)
    packed = dict(
        tok,
        advantages=layout.spread_rows(adv),
        ref_logprobs=layout.spread_response(ref),
        old_logprobs=layout.spread_response(old),
    )
    return layout, padded, packed


def test_packing_layout_keeps_rows_whole_and_buckets_micro_batches():
    _, padded, _ = _policy_inputs()
    lens_p = padded["prompt_mask"].sum(1)
    lens_r = padded["response_mask"].sum(1)
    layout = packing.pack(lens_p, lens_r, SHAPE)
    assert layout.micro == packing.micro_bucket(layout.used) >= layout.used
    ends = layout.row_start + lens_p + lens_r
    assert (ends <= SHAPE.length).all()  # no row splits
    for m, s in {
        (m, s) for m, s in zip(layout.row_micro, layout.row_seq, strict=True)
    }:  # no overlap in a sequence
        rows = np.flatnonzero((layout.row_micro == m) & (layout.row_seq == s))
        spans = sorted((layout.row_start[b], ends[b]) for b in rows)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    with pytest.raises(ValueError, match="train.pack_length"):
        packing.pack([10], [10], packing.PackShape(rows=1, length=16))
    assert [packing.micro_bucket(m) for m in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_packed_logprobs_and_entropy_equal_padded(temperature):
    graphdef, _, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    layout, padded, packed = _policy_inputs()
    model = nnx.merge(graphdef, state.params)
    from gadjax.algo.sequences import sequence_logprobs

    keys = ("prompt_ids", "prompt_mask", "response_ids", "response_mask")
    want_lp, want_ent = sequence_logprobs(
        model, *(padded[k] for k in keys), chunk_size=CHUNK, return_entropy=True, temperature=temperature
    )
    lp, ent = jax.vmap(
        lambda mb: PK.packed_logprobs(
            model, mb, chunk_size=CHUNK, return_entropy=True, temperature=temperature
        )
    )({k: jnp.asarray(v) for k, v in packed.items()})
    mask = padded["response_mask"]
    np.testing.assert_allclose(layout.gather_response(np.asarray(lp), R) * mask, want_lp * mask, **TOL)
    np.testing.assert_allclose(layout.gather_response(np.asarray(ent), R) * mask, want_ent * mask, **TOL)
    ref = jax.jit(PK.make_packed_logprob_fn(graphdef, chunk_size=CHUNK, temperature=temperature))(
        state.params, packed
    )
    want = jax.jit(make_logprob_fn(graphdef, chunk_size=CHUNK, temperature=temperature))(state.params, padded)
    np.testing.assert_allclose(
        layout.gather_response(np.asarray(ref), R) * mask, np.asarray(want) * mask, **TOL
    )


def _policy_pair(mode, graphdef, opt, horizon=float(R)):
    cfg = PolicyLossConfig(loss_agg_mode=mode, kl_beta=0.1, entropy_coeff=0.01)
    padded = make_policy_step(graphdef, opt, cfg, chunk_size=CHUNK, temperature=0.8)
    packed = PK.make_packed_policy_step(
        graphdef, opt, cfg, horizon=horizon, chunk_size=CHUNK, temperature=0.8
    )
    return padded, packed


POLICY_METRICS = ("loss", "pg_loss", "kl_loss", "entropy", "pg_clipfrac", "ppo_kl", "response_tokens")
D_METRICS = ("loss", "d_acc", "teacher_score_mean", "student_score_mean", "grad_norm")


@functools.cache
def _reference(kind):
    """The padded step's metrics and gradient on 1 device (xla): the reference every packed run meets."""
    module = Decoder(CFG, rngs=nnx.Rngs(0)) if kind == "policy" else Discriminator(CFG, rngs=nnx.Rngs(0))
    graphdef, opt, state = _state(module)
    if kind == "policy":
        step, _ = _policy_pair("seq-mean-token-mean", graphdef, opt)
        batch = _policy_inputs()[1]
    else:
        step, batch = make_discriminator_step(graphdef, opt, n_samples=N), _batch()
    new, metrics = jax.jit(step)(state, batch, jax.random.key(0))
    return {k: np.asarray(v) for k, v in metrics.items()}, _grads(state.params, new.params)


def _packed_run(kind, backend="xla", mesh=None):
    """The packed step (seq-mean-token-mean for G) with `backend`, on 1 device or sharded on `mesh`."""
    if kind == "policy":
        graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0), attention=backend))
        _, step = _policy_pair("seq-mean-token-mean", graphdef, opt)
        packed = _policy_inputs()[2]
    else:
        graphdef, opt, state = _state(Discriminator(CFG, rngs=nnx.Rngs(0), attention=backend))
        step = PK.make_packed_discriminator_step(graphdef, opt, n_samples=N)
        packed = _disc_inputs()[2]
    run, params = state, None
    if mesh is None:
        new, metrics = jax.jit(step)(state, packed, jax.random.key(0))
    else:
        from gadjax.models.sharding import state_shardings
        from gadjax.parallel.programs import shard_batch
        from gadjax.parallel.rules import use_mesh

        params = jax.device_put(state.params, state_shardings(state.params, mesh))
        run = TrainState.create(params, opt)
        with use_mesh(mesh):
            new, metrics = jax.jit(step)(run, shard_batch(packed, mesh, row_axis=1), jax.random.key(0))
            np.asarray(metrics["loss"])  # block on the step (DESIGN.md: collectives on CPU)
    return {k: np.asarray(v) for k, v in metrics.items()}, _grads(state.params, new.params)


def _check(kind, got):
    want_m, want_g = _reference(kind)
    got_m, got_g = got
    for k in POLICY_METRICS if kind == "policy" else D_METRICS:
        np.testing.assert_allclose(got_m[k], want_m[k], **TOL, err_msg=k)
    if kind == "disc":
        scores = packing.student_scores(_disc_inputs()[1], got_m["row_scores"])
        np.testing.assert_allclose(scores, want_m["student_scores"], **TOL)
    _close_trees(got_g, want_g)


@pytest.mark.parametrize("kind", ["policy", "disc"])
def test_packed_step_equals_padded(kind):
    _check(kind, _packed_run(kind))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_every_loss_mode_and_its_gradient_equal_padded(mode):
    """PPO clip + k3 KL + entropy, aggregated packed (row_tokens) vs padded, values and d/d logp."""
    layout, padded, packed = _policy_inputs()
    rng = np.random.RandomState(3)
    logp = (rng.randn(B * N, R) * 0.3 - 4.0).astype(np.float32)
    mask = padded["response_mask"].astype(np.float32)
    num_tokens, num_seqs = mask.sum(), float((mask.sum(1) > 0).sum())
    agg = dict(loss_agg_mode=mode, horizon=float(R), num_tokens=num_tokens, num_seqs=num_seqs)

    def loss(lp, old, adv, ref, m, **extra):
        pg, _ = ppo_clip_loss(lp, old, adv, m, clip_eps=0.2, clip_ratio_c=3.0, **agg, **extra)
        return pg + 0.1 * kl_loss(lp, ref, m, kind="low_var_kl", **agg, **extra)

    want, want_g = jax.value_and_grad(loss)(
        logp, padded["old_logprobs"], padded["advantages"], padded["ref_logprobs"], mask
    )
    lp_packed = layout.spread_response(logp)
    args = (packed["old_logprobs"], packed["advantages"], packed["ref_logprobs"], packed["loss_mask"])
    flat = lambda x: x.reshape(-1, SHAPE.length)  # noqa: E731  [M, S, L] -> [M*S, L]: rows are sequences
    got, got_g = jax.value_and_grad(
        lambda lp: loss(flat(lp), *map(flat, args), row_tokens=flat(packed["row_tokens"]))
    )(lp_packed)
    assert float(packing_num_seqs(packed)) == num_seqs
    np.testing.assert_allclose(float(got), float(want), **TOL)
    np.testing.assert_allclose(layout.gather_response(np.asarray(got_g), R), np.asarray(want_g) * mask, **TOL)


def packing_num_seqs(packed):
    from gadjax.algo.losses import packed_num_seqs

    return packed_num_seqs(packed["loss_mask"], packed["row_tokens"])


def _disc_inputs(seed=0):
    batch = _batch(seed)
    layout, packed = packing.pack_discriminator(*batch.values(), N, SHAPE)
    return batch, layout, packed


@pytest.mark.parametrize("loss_type", ["bradley_terry", "bce"])
def test_packed_discriminator_frozen_scores_and_losses_equal_padded(loss_type):
    graphdef, opt, state = _state(Discriminator(CFG, rngs=nnx.Rngs(0)))
    batch, layout, packed = _disc_inputs()
    pad = make_discriminator_step(graphdef, opt, n_samples=N, loss_type=loss_type, update=False)
    pack = PK.make_packed_discriminator_step(graphdef, opt, n_samples=N, loss_type=loss_type, update=False)
    _, m_pad = jax.jit(pad)(state, batch, jax.random.key(0))
    same, m_pack = jax.jit(pack)(state, packed, jax.random.key(0))
    assert int(same.step) == 0  # no update
    for k in ("d_loss", "d_acc", "teacher_score_mean", "student_score_mean"):
        np.testing.assert_allclose(float(m_pack[k]), float(m_pad[k]), **TOL, err_msg=k)
    got = packing.student_scores(layout, np.asarray(m_pack["row_scores"]))
    np.testing.assert_allclose(got, np.asarray(m_pad["student_scores"]), **TOL)


def test_packed_sft_step_equals_padded():
    graphdef, opt, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    batch = _batch()
    keys = ("prompt_ids", "prompt_mask", "response_ids", "response_mask")
    _, packed = packing.pack_padded(*(batch[k] for k in keys), SHAPE)
    new_pad, m_pad = jax.jit(make_sft_step(graphdef, opt, chunk_size=CHUNK))(state, batch, jax.random.key(0))
    new_pack, m_pack = jax.jit(PK.make_packed_sft_step(graphdef, opt, chunk_size=CHUNK))(
        state, packed, jax.random.key(0)
    )
    np.testing.assert_allclose(float(m_pack["sft_loss"]), float(m_pad["sft_loss"]), **TOL)
    _close_trees(_grads(state.params, new_pack.params), _grads(state.params, new_pad.params))


def test_changing_one_row_moves_no_other_row():
    """No attention across rows: every other row's log-probs and D score stay bit-for-bit where they were."""
    graphdef, _, state = _state(Decoder(CFG, rngs=nnx.Rngs(0)))
    _, padded, _ = _policy_inputs()
    layout, tok = packing.pack_padded(*(padded[k] for k in list(padded)[:4]), SHAPE)
    fn = jax.jit(PK.make_packed_logprob_fn(graphdef, chunk_size=CHUNK))
    before = layout.gather_response(np.asarray(fn(state.params, tok)), R)
    victim = int(np.argmax(layout.row_start > 0))  # a row with a neighbour before it in its sequence
    changed = padded["response_ids"].copy()
    changed[victim] = (changed[victim] + 7) % 63 + 1
    _, tok2 = packing.pack_padded(
        padded["prompt_ids"], padded["prompt_mask"], changed, padded["response_mask"], SHAPE
    )
    after = layout.gather_response(np.asarray(fn(state.params, tok2)), R)
    mask = padded["response_mask"] > 0
    others = np.arange(B * N) != victim
    np.testing.assert_array_equal((after * mask)[others], (before * mask)[others])
    assert not np.allclose((after * mask)[victim], (before * mask)[victim])

    dgraph, _, dstate = _state(Discriminator(CFG, rngs=nnx.Rngs(0)))
    batch, dlayout, dpacked = _disc_inputs()
    score = jax.jit(
        lambda p, b: nnx.merge(dgraph, p).scores_at(b["ids"], b["positions"], b["segments"], b["ends"])
    )

    def per(pk):
        micro = [score(dstate.params, {k: v[m] for k, v in pk.items()}) for m in range(dlayout.micro)]
        return dlayout.row_values(np.stack([np.asarray(x) for x in micro]))

    s0 = per(dpacked)
    batch["student_ids"][0] = (batch["student_ids"][0] + 5) % 63 + 1
    _, dpacked2 = packing.pack_discriminator(*batch.values(), N, SHAPE)
    s1 = per(dpacked2)
    moved = np.flatnonzero(s0 != s1)
    np.testing.assert_array_equal(moved, [1])  # row 1 = prompt 0's first sample


def _mesh_case(backend):
    from gadjax.parallel.mesh import make_mesh

    mesh = make_mesh((2, 2, 2))
    for kind in ("policy", "disc"):
        _check(kind, _packed_run(kind, backend, mesh))


@pytest.mark.parametrize("backend", ["xla", "flash"])
def test_packed_steps_on_eight_device_mesh_equal_padded(backend):
    _mesh_case(backend)


@pytest.mark.slow
def test_packed_steps_with_splash_in_interpret_mode(monkeypatch):
    from gadjax.models import splash

    monkeypatch.setattr(splash, "attention", functools.partial(splash.attention, interpret=True))
    _mesh_case("splash")
