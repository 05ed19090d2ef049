"""Decoder parity with Hugging Face transformers (PyTorch) and the HF export round trip."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from gadjax.models.decoder import positions_from_mask
from gadjax.models.hf_export import save_hf_checkpoint
from gadjax.models.hf_io import CheckpointError, load_decoder
from tests.models.hf_fixtures import FAMILIES, left_padded_batch, make_hf_model, torch_logits

LENGTHS = [12, 5, 9, 1]


def _gadjax_logits(model, ids, mask, pos):
    hidden, _ = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("attention", ["xla", "flash"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_on_left_padded_batch(family, attention, tmp_path):
    ref_model = make_hf_model(family, str(tmp_path / "hf"))
    ids, mask, pos = left_padded_batch(ref_model.config.vocab_size, LENGTHS)
    ref = torch_logits(ref_model, ids, mask, pos)

    model = load_decoder(str(tmp_path / "hf"), attention=attention)
    assert model.attention == attention
    ours = _gadjax_logits(model, ids, mask, pos)

    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4
    # Positions helper agrees with what HF generate uses for left padding.
    assert np.array_equal(np.asarray(positions_from_mask(jnp.asarray(mask))), pos)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_round_trip_loads_in_transformers(family, tmp_path):
    ref_model = make_hf_model(family, str(tmp_path / "hf"), seed=1)
    ids, mask, pos = left_padded_batch(ref_model.config.vocab_size, LENGTHS, seed=1)
    ref = torch_logits(ref_model, ids, mask, pos)

    model = load_decoder(str(tmp_path / "hf"))
    save_hf_checkpoint(model, str(tmp_path / "export"), max_shard_bytes=64 << 10)  # force several shards
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
    assert type(reloaded) is type(ref_model)
    again = torch_logits(reloaded, ids, mask, pos)
    assert np.abs(again - ref)[mask.astype(bool)].max() <= 1e-4
    # And gadjax reads its own sharded export.
    ours = _gadjax_logits(load_decoder(str(tmp_path / "export")), ids, mask, pos)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.parametrize("attention", ["xla", "flash"])
def test_kv_cache_prefill_then_decode_equals_full_forward(attention, tmp_path):
    make_hf_model("qwen3", str(tmp_path / "hf"))
    model = load_decoder(str(tmp_path / "hf"), attention=attention)
    ids, mask, pos = left_padded_batch(model.config.vocab_size, [7, 3, 5], seed=3)
    full_hidden, _ = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    full = np.asarray(model.logits(full_hidden))

    prompt_len = 4
    cache = model.init_cache(batch=3, max_length=ids.shape[1] + 2)
    h, cache = model(
        jnp.asarray(ids[:, :prompt_len]),
        jnp.asarray(pos[:, :prompt_len]),
        jnp.asarray(mask[:, :prompt_len]),
        cache,
    )
    steps = [np.asarray(model.logits(h))]
    for t in range(prompt_len, ids.shape[1]):
        h, cache = model(
            jnp.asarray(ids[:, t : t + 1]),
            jnp.asarray(pos[:, t : t + 1]),
            jnp.asarray(mask[:, t : t + 1]),
            cache,
        )
        steps.append(np.asarray(model.logits(h)))
    cached = np.concatenate(steps, axis=1)
    assert int(cache.index) == ids.shape[1]
    assert np.abs(cached - full)[mask.astype(bool)].max() <= 1e-5


def test_mis_shaped_tensor_names_file_tensor_and_shapes(tmp_path):
    import json

    make_hf_model("llama", str(tmp_path / "hf"))
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] = 80  # the file's MLP tensors are 96 wide
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_decoder(str(tmp_path / "hf"))
    msg = str(err.value)
    assert "model.safetensors" in msg and "mlp." in msg
    # Whichever MLP tensor comes first, the message gives found vs expected.
    assert ("(96, 64)" in msg and "(80, 64)" in msg) or ("(64, 96)" in msg and "(64, 80)" in msg)


def test_unsupported_architecture_and_bad_rope_are_named(tmp_path):
    import json

    from gadjax.models.config import ConfigError, ModelConfig

    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match=r"config.json: unsupported model_type 'gpt2'"):
        ModelConfig.from_file(str(p))
    base = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    p.write_text(json.dumps({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
    with pytest.raises(ConfigError, match="rope_type"):
        ModelConfig.from_file(str(p))
    p.write_text(json.dumps({k: v for k, v in base.items() if k != "hidden_size"}))
    with pytest.raises(ConfigError, match="'hidden_size'"):
        ModelConfig.from_file(str(p))


def test_both_rope_config_dialects_read_the_same(tmp_path):
    from gadjax.models.config import ModelConfig

    base = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    old = ModelConfig.from_hf_dict(
        {
            **base,
            "rope_theta": 5e5,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        }
    )
    new = ModelConfig.from_hf_dict(
        {
            **base,
            "rope_parameters": {
                "rope_theta": 5e5,
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        }
    )
    assert old == new and new.rope_theta == 5e5 and new.rope_scaling["rope_type"] == "llama3"


def test_export_dtype_defaults_to_the_source_and_bf16_loads_in_transformers(tmp_path):
    """A bfloat16 source exports as bfloat16 by default (config.json says so as torch_dtype); transformers
    loads it as bfloat16 and its logits match the float32 export's within bfloat16 rounding."""
    import json

    import torch
    from safetensors import safe_open

    ref_model = make_hf_model("qwen2", str(tmp_path / "hf32"), seed=2)
    ref_model.to(torch.bfloat16).save_pretrained(str(tmp_path / "hf16"))  # a bf16 checkpoint, as released
    ids, mask, pos = left_padded_batch(ref_model.config.vocab_size, LENGTHS, seed=2)
    valid = mask.astype(bool)

    model = load_decoder(str(tmp_path / "hf16"))
    assert model.config.source_dtype == "bfloat16"
    save_hf_checkpoint(model, str(tmp_path / "bf16"))  # default: the source's own dtype
    save_hf_checkpoint(model, str(tmp_path / "f32"), dtype="float32")
    for name, dtype, st in (("bf16", "bfloat16", "BF16"), ("f32", "float32", "F32")):
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["torch_dtype"] == dtype
        with safe_open(str(tmp_path / name / "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {st}

    bf16 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16")).eval()
    f32 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "f32")).eval()
    assert bf16.dtype == torch.bfloat16 and f32.dtype == torch.float32
    # The bf16 weights are the source's exactly (bf16 -> float32 -> bf16 is lossless).
    src = dict(ref_model.named_parameters())
    for name, p in bf16.named_parameters():
        assert torch.equal(p, src[name]), name
    lo, hi = torch_logits(bf16, ids, mask, pos)[valid], torch_logits(f32, ids, mask, pos)[valid]
    scale = np.abs(hi).max()
    assert np.abs(lo - hi).max() <= 2e-2 * scale  # bf16 keeps 8 mantissa bits: ~0.4% per rounding
    assert np.abs(lo - hi).max() > 0  # and the bf16 model really computed in bf16
    # float16 on request, from a float32 source (whose default stays float32)
    f32_model = load_decoder(str(tmp_path / "hf32"))
    assert f32_model.config.source_dtype == "float32"
    save_hf_checkpoint(f32_model, str(tmp_path / "f16"), dtype="float16")
    with open(tmp_path / "f16" / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "float16"
    with pytest.raises(ValueError, match="export dtype 'int8' is not one of bfloat16, float16, float32"):
        save_hf_checkpoint(f32_model, str(tmp_path / "bad"), dtype="int8")
