"""LoRA adapters (gadjax.models.lora): a fresh adapter is the base model, merging equals the unmerged
forward, and a train step moves only the adapters (and D's head), with optimizer state for them alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gadjax.algo.optim import make_optimizer
from gadjax.algo.steps import PolicyLossConfig, TrainState, make_discriminator_step, make_policy_step
from gadjax.models import lora
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator
from tests.algo.test_steps import N, _batch, _policy_batch
from tests.tiny_models import tiny_model_config

CFG = tiny_model_config(model_type="qwen2", vocab_size=64, attention_bias=True)
ALL = lora.LoraConfig(rank=4, alpha=8.0, targets=tuple(lora.TARGETS))


def _inputs():
    b = _batch()
    ids = jnp.concatenate([b["prompt_ids"], b["response_ids"]], 1)
    mask = jnp.concatenate([b["prompt_mask"], b["response_mask"]], 1)
    return ids, jnp.maximum(jnp.cumsum(mask, 1) - 1, 0), mask


def _logits(model):
    ids, pos, mask = _inputs()
    hidden, _ = model(ids, pos, mask)
    return np.asarray(model.logits(hidden))


def _randomize_b(model):
    for name in ALL.targets:
        var = getattr(model.blocks, f"{name}_lora_b")
        var[...] = 0.05 * jax.random.normal(jax.random.key(len(name)), var.shape)


def test_targets_resolve_patterns_and_reject_unknown():
    assert lora.resolve_targets(["*_proj"]) == tuple(lora.TARGETS)
    assert lora.resolve_targets(["attention"]) == ("q", "k", "v", "o")
    assert lora.resolve_targets(["down_proj", "q"]) == ("q", "down")
    with pytest.raises(ValueError, match="lm_head"):
        lora.resolve_targets(["lm_head"])


def test_fresh_adapters_give_exactly_the_base_logits():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    base = _logits(model)
    lora.attach(model.blocks, ALL, jax.random.key(1))
    assert len(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))) == 2 * len(ALL.targets)
    np.testing.assert_array_equal(_logits(model), base)


def test_fresh_discriminator_adapters_give_exactly_the_base_scores():
    disc = Discriminator(CFG, rngs=nnx.Rngs(0))
    ids, pos, mask = _inputs()
    base = np.asarray(disc(ids, pos, mask))
    lora.attach(disc.backbone.blocks, ALL, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(disc(ids, pos, mask)), base)


def test_merged_weights_match_the_unmerged_adapters():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    plain_graphdef, _ = nnx.split(model, nnx.Param)
    base_logits = _logits(model)
    lora.attach(model.blocks, ALL, jax.random.key(1))
    _randomize_b(model)
    unmerged = _logits(model)
    _, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    merged = nnx.merge(plain_graphdef, lora.merge(adapters, base, ALL.scale))
    assert np.abs(unmerged - base_logits).max() > 1e-2  # the adapters do something
    np.testing.assert_allclose(_logits(merged), unmerged, atol=2e-5, rtol=1e-5)


def _flat(state):
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _leaves_with_paths(tree):
    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.mark.parametrize("kind", ["policy", "disc"])
def test_one_step_changes_only_adapters_and_head(kind):
    batch = _batch()
    if kind == "policy":
        model = Decoder(CFG, rngs=nnx.Rngs(0))
        lora.attach(model.blocks, ALL, jax.random.key(1))
    else:
        model = Discriminator(CFG, rngs=nnx.Rngs(0))
        lora.attach(model.backbone.blocks, ALL, jax.random.key(1))
    graphdef, params, base = nnx.split(model, lora.trainable_filter(kind == "disc"), nnx.Param)
    before, base_before = _flat(params), _flat(base)
    opt = make_optimizer(1e-2, grad_clip_norm=1.0)
    state = TrainState.create(params, opt)
    # Optimizer state exists only for the trainable leaves: every array leaf of Adam's moments is an
    # adapter (or the head), and their total size is the trainable size.
    n_train = sum(v.size for v in before.values())
    mu_leaves = [(p, x) for p, x in _leaves_with_paths(state.opt_state) if "mu" in p]
    assert mu_leaves and all("lora" in p or "head" in p for p, _ in mu_leaves)
    assert sum(x.size for _, x in mu_leaves) == n_train
    assert n_train < sum(v.size for v in base_before.values()) / 2
    if kind == "policy":
        adv = jnp.asarray(np.linspace(-1, 1, batch["student_ids"].shape[0]), jnp.float32)
        pb = _policy_batch(batch, adv)
        pb["ref_logprobs"] = jnp.zeros(pb["response_ids"].shape, jnp.float32)
        step = make_policy_step(graphdef, opt, PolicyLossConfig(), chunk_size=8)
        new_state, m = jax.jit(step)(state, pb, jax.random.key(0), base)
    else:
        step = make_discriminator_step(graphdef, opt, n_samples=N)
        new_state, m = jax.jit(step)(state, batch, jax.random.key(0), base)
    assert float(m["skipped"]) == 0.0
    after = _flat(new_state.params)
    assert set(after) == set(before)
    assert all("lora" in k or k == "head" for k in after)
    changed = {k for k in after if not np.array_equal(after[k], before[k])}
    assert {k for k in after if k.endswith("lora_b")} <= changed  # B moves from zero on the first step
    if kind == "disc":
        assert "head" in changed
    for k, v in _flat(base).items():
        np.testing.assert_array_equal(v, base_before[k])


def test_adapters_are_sharded_not_replicated_on_a_mesh():
    from gadjax.models.sharding import init_sharded
    from gadjax.parallel.mesh import make_mesh

    mesh = make_mesh((1, -1, 2))  # fsdp 4 x tensor 2
    model = init_sharded(lambda: Decoder(CFG, rngs=nnx.Rngs(0)), mesh)
    lora.attach(model.blocks, ALL, jax.random.key(1))
    for name in ALL.targets:
        for ab in "ab":
            arr = getattr(model.blocks, f"{name}_lora_{ab}")[...]
            # Every adapter is split over fsdp: by its embed dimension, else by its rank dimension.
            assert "fsdp" in jax.tree.leaves(tuple(arr.sharding.spec)), (name, ab, arr.sharding.spec)
