"""Serving and evaluation on every local device: the weights sharded by the project's rules over a
(1, 1, 8) tensor-parallel mesh of the 8 emulated devices give the tokens the one-device model gives."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from gadjax.eval.generation import generate_responses
from gadjax.models.hf_io import load_decoder
from gadjax.models.tokenizer import load_tokenizer
from gadjax.parallel.mesh import MeshDoesNotFitError, local_mesh, parse_mesh_flag
from gadjax.serving import GenParams
from gadjax.serving.continuous import ContinuousEngine
from tests.serving.serve_fixtures import user

PROMPTS = ["a long story please", "what is 2 + 2?", "tell me about rain", "hi"]


@pytest.fixture(scope="module")
def models(model_dir):
    mesh = local_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 8}
    one, sharded = load_decoder(model_dir), load_decoder(model_dir, mesh=mesh)
    # weights really are split over the 8 devices (the wide dimensions; odd head counts stay replicated)
    leaves = jax.tree.leaves(nnx.state(sharded, nnx.Param))
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in leaves)
    return load_tokenizer(model_dir), one, sharded, mesh


def _serve(model, tok, requests):
    engine = ContinuousEngine(
        model, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, max_batch=4, max_new_tokens=24,
        max_prompt_tokens=64, min_prompt_bucket=64, chunk_steps=4, seed=0,
    )  # fmt: skip
    try:
        futs = [engine.submit(ids, params, n) for ids, params, n in requests]
        return [[g.token_ids for g in f.result(timeout=300)] for f in futs]
    finally:
        engine.close()


@pytest.mark.slow
def test_serving_on_all_local_devices_equals_one_device(models):
    tok, one, sharded, _ = models
    reqs = []
    for i, p in enumerate(PROMPTS):
        text = tok.apply_chat_template(user(p), add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        reqs.append((ids, GenParams(temperature=0.0, max_tokens=24), 1))
        reqs.append((ids, GenParams(temperature=0.9, top_p=0.9, max_tokens=24, seed=10 + i), 2))
    ref = _serve(one, tok, reqs)
    assert sum(len(t) for r in ref for t in r) > 4 * 24  # real generations, not all empty
    assert _serve(sharded, tok, reqs) == ref


@pytest.mark.slow
def test_evaluation_on_all_local_devices_equals_one_device(models):
    tok, one, sharded, mesh = models
    chats = [user(p) for p in PROMPTS]
    kw = dict(max_new_tokens=16, batch_size=4, max_prompt_tokens=64, progress=False)
    ref = generate_responses(one, tok, chats, **kw)
    got = generate_responses(sharded, tok, chats, mesh=mesh, **kw)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    sampled = dict(kw, temperature=0.9, seed=3)
    ref = generate_responses(one, tok, chats, **sampled)
    got = generate_responses(sharded, tok, chats, mesh=mesh, **sampled)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]


def test_mesh_flag_and_a_mesh_that_does_not_fit():
    assert parse_mesh_flag("1,1,-1") == (1, 1, -1) and parse_mesh_flag("(2,1,4)") == (2, 1, 4)
    assert parse_mesh_flag("auto") == (1, 1, 1)  # CPU: the 8 devices are an emulation
    with pytest.raises(ValueError, match="--mesh '1,2': expected 'auto' or three integers"):
        parse_mesh_flag("1,2")
    with pytest.raises(MeshDoesNotFitError, match=r"\(1,1,16\) needs 16 devices, found 8; set --mesh 1,1,-1"):
        local_mesh((1, 1, 16))
    assert dict(local_mesh((2, 1, -1)).shape) == {"data": 2, "fsdp": 1, "tensor": 4}
