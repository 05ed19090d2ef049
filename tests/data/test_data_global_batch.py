"""Multi-host: disjoint per-process shards, and global jax.Arrays on the 8-device mesh."""

import jax
import numpy as np
import pytest
from data_fixtures import gad_rows, write_jsonl
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from gadjax.data.batching import pad_batch_to
from gadjax.data.global_batch import make_global_batch
from gadjax.data.pipeline import DataConfig, DataPipeline
from gadjax.data.sources import JsonlSource


def host(src, tok, index, count=2, **kw):
    cfg = DataConfig(**{"batch_size": 8, "max_prompt_tokens": 32, "max_response_tokens": 16, "num_epochs": 1,
                        "seed": 5, **kw})
    return DataPipeline(src, tok, cfg, process_index=index, process_count=count)


@pytest.fixture
def src(tmp_path):
    rows = gad_rows(24)
    for i in range(0, 24, 3):  # vary lengths so the two hosts bucket differently
        rows[i]["teacher_response"] = " ".join(["paris"] * 14)
    return JsonlSource(write_jsonl(tmp_path / "a.jsonl", rows))


def test_two_processes_get_disjoint_shards_covering_the_dataset(src, tokenizer):
    seen = []
    for index in range(2):
        batches = list(host(src, tokenizer, index).iterator())
        assert all(len(b["example_id"]) == 4 for b in batches)  # local batch = 8 / 2
        seen.append({int(i) for b in batches for i in b["example_id"]})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(24))
    # An odd-sized source: the extra row is left out (and reported) so both hosts take equal steps.
    odd = JsonlSource(write_jsonl(src.paths[0] + ".odd.jsonl", gad_rows(25)))
    assert host(odd, tokenizer, 0).iterator().stats.as_dict()["rows_left_out_for_equal_shards"] == 1
    with pytest.raises(ValueError, match="not divisible"):
        host(src, tokenizer, 0, count=3)


@pytest.mark.parametrize("shape", [(2, 2, 2), (4, 2, 1)])
def test_global_batch_on_8_device_mesh(src, tokenizer, shape):
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    spec = PartitionSpec(("data", "fsdp"))
    local = [next(host(src, tokenizer, i).iterator()) for i in range(2)]
    # Simulate the shape agreement of two hosts, then feed this single process the whole batch.
    p = max(b["prompt_ids"].shape[1] for b in local)
    r = max(b["response_ids"].shape[1] for b in local)
    pad = tokenizer.pad_token_id
    widened = [pad_batch_to(b, p, r, pad) for b in local]
    for b, w in zip(local, widened, strict=True):  # padding added on the left of prompts, right of responses
        np.testing.assert_array_equal(w["prompt_ids"][:, p - b["prompt_ids"].shape[1]:], b["prompt_ids"])
        np.testing.assert_array_equal(w["response_mask"][:, :b["response_ids"].shape[1]], b["response_mask"])
        assert w["prompt_mask"].sum() == b["prompt_mask"].sum()
    full = {k: np.concatenate([w[k] for w in widened]) for k in widened[0]}
    out = make_global_batch(full, mesh, spec, pad_id=pad)
    n_shards = shape[0] * shape[1]
    for name, arr in out.items():
        # example_id is int64 on the host; on device it is jax's canonical int (int32 without x64).
        assert arr.shape == full[name].shape, name
        assert arr.dtype == jax.dtypes.canonicalize_dtype(full[name].dtype), name
        expected = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *[None] * (arr.ndim - 1)))
        assert arr.sharding.is_equivalent_to(expected, arr.ndim), (name, arr.sharding)
        np.testing.assert_array_equal(np.asarray(arr), full[name])
        for shard in arr.addressable_shards:  # each device holds its rows of the batch
            assert shard.data.shape[0] == 8 // n_shards
            np.testing.assert_array_equal(np.asarray(shard.data), full[name][shard.index])
    # Replicated along "tensor": devices that differ only in the tensor coordinate hold the same rows.
    assert len({str(s.index) for s in out["prompt_ids"].addressable_shards}) == n_shards
