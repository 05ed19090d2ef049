"""Parameters land where the rule table says on the 8-device mesh, and sharding changes no numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from gadjax.models.decoder import Decoder
from gadjax.models.hf_io import load_decoder
from gadjax.models.sharding import init_sharded
from gadjax.parallel.mesh import make_mesh
from gadjax.parallel.rules import logical_to_mesh_axes, use_mesh
from tests.models.hf_fixtures import left_padded_batch, make_hf_model
from tests.tiny_models import tiny_model_config

# Written out by hand from DEFAULT_RULES (embed -> fsdp; heads/kv_heads/mlp/vocab -> tensor).
EXPECTED = {
    "embed": P("tensor", "fsdp"),
    "final_norm": P(None),
    "lm_head": P("fsdp", "tensor"),
    "blocks/attn_norm": P(None, None),
    "blocks/q": P(None, "fsdp", "tensor", None),
    "blocks/k": P(None, "fsdp", "tensor", None),
    "blocks/v": P(None, "fsdp", "tensor", None),
    "blocks/o": P(None, "tensor", None, "fsdp"),
    "blocks/q_norm": P(None, None),
    "blocks/k_norm": P(None, None),
    "blocks/mlp_norm": P(None, None),
    "blocks/gate": P(None, "fsdp", "tensor"),
    "blocks/up": P(None, "fsdp", "tensor"),
    "blocks/down": P(None, "tensor", "fsdp"),
}


def _norm_spec(spec: P, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


def test_rule_table_maps_logical_names():
    assert logical_to_mesh_axes(("batch", "length", "act_embed")) == P(("data", "fsdp"), None, None)
    # A mesh axis shards one dimension only.
    assert logical_to_mesh_axes(("embed", "embed")) == P("fsdp", None)


def test_every_parameter_sharded_per_rule_table_and_forward_matches(tmp_path):
    make_hf_model("qwen3", str(tmp_path / "hf"))
    single = load_decoder(str(tmp_path / "hf"))
    mesh = make_mesh((2, 2, 2))
    sharded = load_decoder(str(tmp_path / "hf"), mesh=mesh)

    seen = set()
    for path, leaf in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        key = "/".join(map(str, path))
        arr = leaf[...]
        assert _norm_spec(arr.sharding.spec, arr.ndim) == _norm_spec(EXPECTED[key], arr.ndim), key
        assert arr.sharding.mesh.shape == mesh.shape
        seen.add(key)
    assert seen == set(EXPECTED)

    ids, mask, pos = left_padded_batch(single.config.vocab_size, [9, 4, 7, 2, 9, 1, 3, 8], seed=5)
    ref = np.asarray(single.logits(single(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))[0]))

    @jax.jit
    def fwd(model, ids, pos, mask):
        return model.logits(model(ids, pos, mask)[0])

    with use_mesh(mesh):
        got = np.asarray(nnx.jit(fwd)(sharded, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask)))
    assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-5


def test_flash_attention_on_the_mesh_matches_single_device_xla(tmp_path):
    """model.attention=flash under the (2, 2, 2) mesh: logits and parameter gradients equal the reference
    einsum attention on one device (the blocked loops and the custom VJP partition over batch and heads)."""
    make_hf_model("qwen2", str(tmp_path / "hf"))  # GQA 7:1
    single = load_decoder(str(tmp_path / "hf"))
    mesh = make_mesh((2, 2, 2))
    sharded = load_decoder(str(tmp_path / "hf"), mesh=mesh, attention="flash")
    ids, mask, pos = left_padded_batch(single.config.vocab_size, [9, 4, 7, 2, 9, 1, 3, 8], seed=5)
    ids, mask, pos = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)

    def loss(model, ids, pos, mask):
        logits = model.logits(model(ids, pos, mask)[0])
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * mask), logits

    grad_fn = nnx.jit(nnx.grad(loss, has_aux=True))
    g_ref, ref = grad_fn(single, ids, pos, mask)
    with use_mesh(mesh):
        g_got, got = grad_fn(sharded, ids, pos, mask)
    valid = np.asarray(mask).astype(bool)
    assert np.abs(np.asarray(got) - np.asarray(ref))[valid].max() <= 1e-5
    for name in ("embed", "blocks"):
        for a, b in zip(jax.tree.leaves(g_got[name]), jax.tree.leaves(g_ref[name]), strict=True):
            assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4, name


def test_init_sharded_creates_params_in_place_and_replicates_indivisible_dims():
    cfg = tiny_model_config(num_heads=3, num_kv_heads=3)
    mesh = make_mesh((1, 4, 2))
    model = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    q = model.blocks.q[...]
    # 3 heads do not divide over tensor=2: that dimension is replicated, embed stays on fsdp.
    assert _norm_spec(q.sharding.spec, 4) == (None, "fsdp", None, None)
    assert _norm_spec(model.blocks.gate[...].sharding.spec, 3) == (None, "fsdp", "tensor")
    eager = Decoder(cfg, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(q), np.asarray(eager.blocks.q[...]), rtol=1e-6, atol=1e-9)


def test_adam_moments_are_sharded_like_their_parameters():
    """The optimizer state must not be replicated: Adam's mu / nu take their parameter's sharding."""
    from gadjax.algo.optim import make_optimizer
    from gadjax.algo.steps import TrainState
    from gadjax.models.sharding import state_shardings
    from gadjax.parallel.programs import train_state_shardings

    cfg = tiny_model_config()
    mesh = make_mesh((1, 4, 2))
    _, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    opt = make_optimizer(1e-3)
    abstract = jax.eval_shape(lambda p: TrainState.create(p, opt), params)
    shardings = train_state_shardings(abstract, state_shardings(params, mesh), mesh)
    moments = {}
    for path, sh in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if "mu" in names or "nu" in names:
            moments["/".join(names[names.index("mu" if "mu" in names else "nu") :])] = sh.spec
    assert _norm_spec(moments["mu/blocks/gate/value"], 3) == (None, "fsdp", "tensor")
    assert _norm_spec(moments["nu/embed/value"], 2) == ("tensor", "fsdp")
    assert _norm_spec(shardings.opt_state.hyperparams["learning_rate"].spec, 0) == ()
