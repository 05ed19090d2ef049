"""GGUF import against Hugging Face transformers: its models (written out llama.cpp-style) and its own GGUF
loader (which dequantizes and un-permutes independently of ours)."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gadjax.models.gguf import iter_gguf_tensors, read_gguf_config
from tests.models.smollm2 import smollm2_gguf

TINY = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=50000.0,
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "llama_tied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(num_attention_heads=6, num_key_value_heads=1)),
    # head_dim 128 != hidden / heads; transformers' GGUF loader ignores qwen3.attention.key_length and
    # assumes 128 (true of every released Qwen3), so the reference only agrees at 128.
    "qwen3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False),
    ),
}
# llama.cpp tensor names (gguf-py constants / convert_hf_to_gguf.py) for HF parameter suffixes.
_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llamacpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_TO_GGUF[rest]}"


def _hf_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**TINY, **extra, **overrides})).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0: perturb them so they are checked
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _write_gguf(
    path: str,
    model: torch.nn.Module,
    arch: str,
    rope_freqs: np.ndarray | None = None,
    reshape: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Write `model` as llama.cpp's converter would: F32 tensors, llama Q/K rows permuted."""
    cfg = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, array in _state_dict(model).items():
        if arch == "llama" and "q_proj" in name:
            array = _llamacpp_permute(array, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == "llama" and "k_proj" in name:
            array = _llamacpp_permute(array, cfg.num_attention_heads, cfg.num_key_value_heads)
        if reshape and name in reshape:
            array = array.reshape(reshape[name])
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(array, dtype=np.float32))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _transformers_load(path: str) -> tuple[dict[str, np.ndarray], object]:
    """transformers' own GGUF import of `path`: (state dict as float32 numpy, config)."""
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}, model.config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_synthetic_gguf_round_trips_to_hf_layout(family, tmp_path):
    """HF weights -> llama.cpp-style GGUF -> iter_gguf_tensors gives back exactly the HF weights, and the
    same tensors transformers' GGUF loader produces from that file."""
    arch = "llama" if family.startswith("llama") else family
    model = _hf_model(family)
    path = str(tmp_path / f"{family}.gguf")
    _write_gguf(path, model, arch)

    ours = dict(iter_gguf_tensors(path))
    expected = _state_dict(model)
    assert sorted(ours) == sorted(expected)
    for name, array in ours.items():
        assert array.dtype == np.float32 and array.shape == expected[name].shape, name
        np.testing.assert_array_equal(array, expected[name], err_msg=name)

    reference, _ = _transformers_load(path)
    for name, array in ours.items():
        np.testing.assert_allclose(array, reference[name], rtol=0, atol=1e-6, err_msg=name)

    config = read_gguf_config(path)
    hf = model.config
    assert config["model_type"] == arch
    assert config["architectures"] == [type(model).__name__]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps"):
        assert config[key] == getattr(hf, key), key
    assert config["rope_theta"] == hf.rope_parameters["rope_theta"]
    assert config["head_dim"] == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    assert config["attention_bias"] == (arch == "qwen2")
    assert "rope_scaling" not in config
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    # transformers builds the same model from our config dict
    rebuilt = type(model)(type(hf)(**config))
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path):
    """llama.cpp stores Llama 3 rope scaling only as a `rope_freqs` table (original / scaled inverse
    frequency); the config must name the scaling transformers would use to produce that table."""
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    model = _hf_model("llama", head_dim=64, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                      rope_theta=500000.0, rope_scaling=dict(scaling), max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    path = str(tmp_path / "llama3.gguf")
    _write_gguf(path, model, "llama", rope_freqs=(plain / scaled.double()).numpy())

    config = read_gguf_config(path)
    assert config["rope_scaling"] == scaling
    assert config["rope_theta"] == 500000.0
    assert "rope_freqs.weight" not in dict(iter_gguf_tensors(path))

    # A table that no known Llama 3 parameter set produces is an error, not a silent guess.
    bad = str(tmp_path / "bad_rope.gguf")
    _write_gguf(bad, model, "llama", rope_freqs=np.linspace(1.0, 7.0, 32))
    with pytest.raises(ValueError, match=r"bad_rope\.gguf.*rope_freqs"):
        read_gguf_config(bad)


def test_mis_shaped_tensor_is_named_with_expected_and_found_shape(tmp_path):
    model = _hf_model("llama")
    path = str(tmp_path / "broken.gguf")
    name = "model.layers.1.mlp.up_proj.weight"  # [80, 48] written as [48, 80]
    _write_gguf(path, model, "llama", reshape={name: (48, 80)})
    with pytest.raises(ValueError) as err:
        for _ in iter_gguf_tensors(path):
            pass
    message = str(err.value)
    assert "broken.gguf" in message and "blk.1.ffn_up.weight" in message
    assert "(48, 80)" in message and "(80, 48)" in message


def test_unsupported_architecture_and_missing_tensor(tmp_path):
    path = str(tmp_path / "phi.gguf")
    writer = gguf.GGUFWriter(path, "phi2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"phi\.gguf.*unsupported GGUF architecture 'phi2'"):
        read_gguf_config(path)
    with pytest.raises(ValueError, match="phi2"):
        next(iter_gguf_tensors(path))

    # qwen3 needs q/k norms: a file without them is incomplete.
    model = _hf_model("qwen3")
    full = _state_dict(model)
    partial = str(tmp_path / "partial.gguf")
    writer = gguf.GGUFWriter(partial, "qwen3")
    cfg = model.config
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for name, array in full.items():
        if not name.endswith("0.self_attn.q_norm.weight"):
            writer.add_tensor(_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"partial\.gguf.*missing.*layers\.0\.self_attn\.q_norm\.weight"):
        list(iter_gguf_tensors(partial))


@pytest.mark.slow
def test_smollm2_config_matches_model_card():
    path = smollm2_gguf()
    config = read_gguf_config(path)
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    expected = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, head_dim=64, tie_word_embeddings=True,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                    bos_token_id=1, eos_token_id=2, attention_bias=False)
    assert {k: config[k] for k in expected} == expected
    assert "rope_scaling" not in config


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers_gguf_state_dict():
    """Every dequantized, un-permuted tensor (and the config) equals transformers' own GGUF conversion."""
    path = smollm2_gguf()
    reference, ref_config = _transformers_load(path)
    config = read_gguf_config(path)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert config[key] == getattr(ref_config, key), key
    assert config["rms_norm_eps"] == pytest.approx(ref_config.rms_norm_eps, rel=1e-6)
    assert config["rope_theta"] == ref_config.rope_parameters["rope_theta"]
    seen = set()
    for name, array in iter_gguf_tensors(path):
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, reference[name], rtol=0, atol=1e-6, err_msg=name)
        seen.add(name)
    # tied embeddings: lm_head is the embedding, which the file (and so we) hold once
    assert set(reference) - seen == {"lm_head.weight"}
    assert len(seen) == 272
