"""Continuous batching (SamplingConfig.batching="continuous") against the static rollout: same key, same
tokens, on rows whose stop positions differ widely (stop ids chosen by the test), with N samples per
prompt, micro-batches, a merged-LoRA state, on one device and on the 8-device mesh; caps and stops."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from gadjax.models import lora
from gadjax.models.hf_io import load_decoder
from gadjax.parallel.mesh import make_mesh
from gadjax.rollout import Sampler, SamplingConfig, schedule
from tests.models.hf_fixtures import left_padded_batch, make_hf_model

LENGTHS = [6, 11, 3, 8]
R = 20
EXACT = ("response_ids", "response_mask", "response_lengths", "truncated", "prompt_ids", "prompt_mask")


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("qwen3"))
    make_hf_model("qwen3", p)
    return p


@pytest.fixture(scope="module")
def model(path):
    return load_decoder(path)


@pytest.fixture(scope="module")
def batch(model):
    ids, mask, _ = left_padded_batch(model.config.vocab_size, LENGTHS, seed=4)
    return ids, mask


def _cfg(**kw) -> SamplingConfig:
    base = dict(max_new_tokens=R, temperature=0.9, top_p=0.95, n_samples=3, prompt_buckets=(16,))
    return SamplingConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def stops(model, batch):
    """Stop ids that end rows at very different positions: the token row 0 samples at position 1, and
    the one row 5 samples at position 12 (first occurrences), in the free-running static rollout."""
    free = Sampler(model, _cfg()).generate(*batch, jax.random.key(3))
    chosen = []
    for row, pos in ((0, 1), (5, 12)):
        toks = free.response_ids[row]
        first = next(i for i in range(pos, R) if toks[i] not in toks[:i] and toks[i] not in chosen)
        chosen.append(int(toks[first]))
    return frozenset(chosen)


def _assert_same(got, want, what: str, atol: float = 2e-5) -> None:
    for name in EXACT:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{name}, {what}")
    for name in ("logprobs", "sampling_logprobs"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), atol=atol, err_msg=f"{name}, {what}"
        )


def test_continuous_gives_the_static_tokens_with_mixed_stops(model, batch, stops):
    cfg = _cfg(stop_ids=stops)
    static = Sampler(model, cfg).generate(*batch, jax.random.key(3))
    lengths = static.response_lengths
    # The test is about rows that stop far apart: early stops, late stops and rows at the cap.
    assert lengths.min() <= 3 and (lengths == R).any() and len(set(lengths.tolist())) >= 4, lengths
    assert static.truncated.any() and not static.truncated.all()
    # One slot, a few (rows queue up), as many as rows; both layer loops.
    runs = {}
    for slots, loop in ((1, "unrolled"), (5, "unrolled"), (5, "scan"), (12, "scan")):
        sampler = Sampler(
            model, dataclasses.replace(cfg, batching="continuous", slots=slots, layer_loop=loop)
        )
        runs[slots] = got = sampler.generate(*batch, jax.random.key(3))
        _assert_same(got, static, f"{slots} slots, {loop}")
    # The work follows the rows: 5 slots ran about sum(lengths) / 5 iterations, not R per row.
    five = runs[5]
    assert five.decode_steps == schedule.continuous_steps(lengths, 5)  # the host model of the queue
    assert static.decode_steps == schedule.static_steps(lengths)
    assert 5 * five.decode_steps < len(lengths) * static.decode_steps
    assert five.decode_steps >= int(np.ceil((lengths - 1).sum() / 5))


def test_tail_compaction_keeps_the_tokens_and_follows_the_live_rows(model, batch, stops):
    """Once the queue is empty the live rows move into half as many slots, then half again: the tokens
    are those of the static rollout (and of no compaction), the iterations are the same, and the
    slot-steps computed are what the host model of the queue predicts, fewer than without it."""
    cfg = dataclasses.replace(_cfg(stop_ids=stops), batching="continuous", slots=8, layer_loop="scan")
    static = Sampler(model, _cfg(stop_ids=stops)).generate(*batch, jax.random.key(3))
    lengths = static.response_lengths
    flat = Sampler(model, dataclasses.replace(cfg, tail_compaction=0)).generate(*batch, jax.random.key(3))
    for loop in ("scan", "unrolled"):
        sampler = Sampler(model, dataclasses.replace(cfg, layer_loop=loop))
        assert sampler.slot_levels_for(4) == (8, 4, 2, 1)
        got = sampler.generate(*batch, jax.random.key(3))
        _assert_same(got, static, f"tail compaction, {loop}")
        assert got.decode_steps == flat.decode_steps == schedule.continuous_steps(lengths, 8)
        assert got.decode_slot_steps == schedule.continuous_slot_steps(lengths, (8, 4, 2, 1))
    assert flat.decode_slot_steps == 8 * flat.decode_steps == schedule.continuous_slot_steps(lengths, (8,))
    assert got.decode_slot_steps < flat.decode_slot_steps
    assert static.decode_slot_steps == len(lengths) * static.decode_steps


def test_the_host_model_of_the_tail():
    """One long row among short ones, 4 slots halving to 1: every row starts at iteration 0, the three
    short ones end there, and the long one decodes its 8 remaining tokens in a one-slot loop."""
    lengths = np.array([10, 2, 2, 2])
    assert schedule.continuous_steps(lengths, 4) == 9
    assert schedule.continuous_slot_steps(lengths, (4,)) == 36
    assert schedule.continuous_slot_steps(lengths, (4, 2, 1)) == 4 + 8
    assert schedule.continuous_slot_steps(lengths, (4, 2)) == 4 + 8 * 2
    # Rows still queued: no compaction before the last one has started (2 slots, 5 rows of 3 tokens).
    assert schedule.continuous_slot_steps(np.full(5, 3), (2, 1)) == 2 * 5 + 1 * 1
    from gadjax.rollout.config import slot_levels

    assert slot_levels(16, 3) == (16, 8, 4, 2) and slot_levels(16, 0) == (16,)
    assert slot_levels(8, 3, multiple=4) == (8, 4)  # every level shards evenly over the batch shards
    assert slot_levels(5, 9) == (5, 2, 1)


def test_continuous_micro_batches_and_a_merged_lora_state(model, batch, stops, path):
    cfg = _cfg(stop_ids=stops, micro_batches=2)
    whole = Sampler(model, _cfg(stop_ids=stops)).generate(*batch, jax.random.key(8))
    chunked = Sampler(model, dataclasses.replace(cfg, batching="continuous", slots=2))
    _assert_same(chunked.generate(*batch, jax.random.key(8)), whole, "2 chunks x 2 slots")

    # The trainer's LoRA path: the sampler gets the base with W + scale * A B merged in (state=...).
    adapted = load_decoder(path)
    lora.attach(
        adapted.blocks, lora.LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "down")), jax.random.key(1)
    )
    for name in ("q", "v", "down"):
        b = getattr(adapted.blocks, f"{name}_lora_b")
        b[...] = 0.2 * jax.random.normal(jax.random.key(len(name)), b[...].shape)
    adapters = nnx.state(adapted, nnx.LoRAParam)
    merged = lora.merge(adapters, nnx.state(model), adapted.blocks.lora_scale)
    static = Sampler(model, _cfg(stop_ids=stops)).generate(*batch, jax.random.key(8), state=merged)
    assert (static.response_ids != whole.response_ids).any()  # the adapters changed the policy
    got = chunked.generate(*batch, jax.random.key(8), state=merged)
    _assert_same(got, static, "merged LoRA state")


def test_caps_and_stops(model, batch, stops):
    """R = 1 (every row ends at its first token), greedy, and a first token that is a stop id."""
    for kw in (dict(max_new_tokens=1), dict(temperature=0.0, max_new_tokens=7)):
        cfg = _cfg(stop_ids=stops, **kw)
        want = Sampler(model, cfg).generate(*batch, jax.random.key(2))
        got = Sampler(model, dataclasses.replace(cfg, batching="continuous", slots=3)).generate(
            *batch, jax.random.key(2)
        )
        _assert_same(got, want, str(kw))
        assert (got.response_lengths <= cfg.max_new_tokens).all()
    first = Sampler(model, _cfg(max_new_tokens=1)).generate(*batch, jax.random.key(2)).response_ids[:, 0]
    cfg = _cfg(stop_ids=frozenset({int(first[0]), int(first[4])}), max_new_tokens=9)
    want = Sampler(model, cfg).generate(*batch, jax.random.key(2))
    got = Sampler(model, dataclasses.replace(cfg, batching="continuous", slots=4)).generate(
        *batch, jax.random.key(2)
    )
    _assert_same(got, want, "stop at the first token")
    assert want.response_lengths[0] == 1 and want.response_lengths[4] == 1
    stopped = ~got.truncated
    last = got.response_ids[np.arange(len(stopped)), got.response_lengths - 1]
    assert np.isin(last[stopped], list(cfg.stop_ids)).all()  # a stopped row ends with its stop id
    assert (got.response_lengths[got.truncated] == 9).all()  # a row without a stop runs to its cap
    with pytest.raises(ValueError, match="SamplingConfig.batching='dynamic'"):
        SamplingConfig(batching="dynamic")


def test_continuous_on_the_mesh_equals_static_on_one_device(path, batch, stops):
    cfg = _cfg(stop_ids=stops)
    want = Sampler(load_decoder(path), cfg).generate(*batch, jax.random.key(3))
    mesh = make_mesh((2, 2, 2))
    sampler = Sampler(
        load_decoder(path, mesh=mesh), dataclasses.replace(cfg, batching="continuous"), mesh=mesh
    )
    assert sampler.layer_loop == "scan" and sampler.slots_for(4) == 8  # half of 12 rows, rounded to 4 shards
    _assert_same(sampler.generate(*batch, jax.random.key(3)), want, "8-device mesh")


def test_memory_estimate_of_the_slot_layout(model):
    mc = model.config
    cfg = _cfg(batching="continuous", slots=4, layer_loop="scan", tail_compaction=0)
    est = Sampler(model, cfg).memory_estimate(batch=4, prompt_bucket=16)
    per_slot = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 4  # keys + values, float32
    # 4 slots of prompt bucket + R + 1 scratch columns, and the 4 prompts' 16-column prompt cache.
    assert est.kv_cache_bytes == est.kv_cache_bytes_per_device == per_slot * (4 * (16 + R + 1) + 4 * 16)
    # Tail compaction: its first gather holds the 2-slot cache beside the 4-slot one.
    tail = Sampler(model, dataclasses.replace(cfg, tail_compaction=3)).memory_estimate(4, 16)
    assert tail.kv_cache_bytes == est.kv_cache_bytes + per_slot * 2 * (16 + R + 1)
    static = Sampler(model, dataclasses.replace(cfg, batching="static")).memory_estimate(4, 16)
    assert static.kv_cache_bytes_per_device == per_slot * (12 * (16 + R) + 4 * (16 + R))
