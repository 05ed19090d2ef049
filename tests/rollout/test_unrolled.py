"""The unrolled decode layout (gadjax.rollout.unrolled) against the model's own scanned cached forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadjax.models.decoder import positions_from_mask
from gadjax.models.hf_io import load_decoder
from gadjax.rollout import Sampler, SamplingConfig, unrolled
from tests.models.hf_fixtures import FAMILIES, make_hf_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The HF reference families (every weight perturbed: norms, biases, llama3 rope, GQA 7:1, untied
    head), loaded by gadjax."""
    root = tmp_path_factory.mktemp("unrolled")
    out = {}
    for family in FAMILIES:
        make_hf_model(family, str(root / family))
        out[family] = load_decoder(str(root / family))
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decode_steps_equal_scanned_forward(family, models):
    model = models[family]
    b, p, steps = 3, 5, 4
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(1, 128, (b, p)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], jnp.int32)  # left-padded
    cache = model.init_cache(b, p + steps)
    _, cache = model(ids, positions_from_mask(mask), mask, cache)
    layered = unrolled.unstack_cache(cache)
    weights = unrolled.decode_weights(model)
    pos = mask.sum(1) - 1
    tok = jnp.asarray(rng.randint(1, 128, (b,)), jnp.int32)
    for _ in range(steps):
        pos = pos + 1
        hidden, cache = model(tok[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache)
        want = model.logits(hidden)[:, 0]
        got, layered = unrolled.decode_step(weights, model.config, layered, tok, pos)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
        for i in range(model.config.num_layers):
            keys = np.swapaxes(np.asarray(cache.k[i]), 2, 3)  # the layout keeps keys as [B, Hkv, D, S]
            np.testing.assert_allclose(np.asarray(layered.k[i]), keys, atol=1e-5)
            np.testing.assert_allclose(np.asarray(layered.v[i]), np.asarray(cache.v[i]), atol=1e-5)
        tok = jnp.argmax(got, -1).astype(jnp.int32)
    assert int(layered.index) == int(cache.index)
    np.testing.assert_array_equal(np.asarray(layered.mask), np.asarray(cache.mask))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampler_layer_loops_agree(family, models):
    """Sampling with the same key through either layer loop gives the same tokens and log-probs."""
    model = models[family]
    rng = np.random.RandomState(1)
    ids = rng.randint(1, 128, (2, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    outs = {}
    for loop in ("scan", "unrolled"):
        cfg = SamplingConfig(
            max_new_tokens=12, temperature=0.7, n_samples=2, layer_loop=loop, method="gumbel"
        )
        sampler = Sampler(model, cfg)
        assert sampler.layer_loop == loop
        outs[loop] = sampler.generate(ids, mask, jax.random.key(5))
    np.testing.assert_array_equal(outs["scan"].response_ids, outs["unrolled"].response_ids)
    np.testing.assert_allclose(outs["scan"].logprobs, outs["unrolled"].logprobs, atol=1e-5)
    np.testing.assert_allclose(outs["scan"].sampling_logprobs, outs["unrolled"].sampling_logprobs, atol=1e-5)


def test_auto_layer_loop_resolution(models):
    model = models["llama"]
    assert Sampler(model, SamplingConfig()).layer_loop == "unrolled"  # one CPU device
    with pytest.raises(ValueError, match="layer_loop"):
        SamplingConfig(layer_loop="fast")
