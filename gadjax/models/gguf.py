"""Import llama.cpp GGUF checkpoints (llama, qwen2, qwen3 architectures) into Hugging Face layout.

Two entry points:

- `read_gguf_config(path)`: the Hugging Face ``config.json`` dict the file describes.
- `iter_gguf_tensors(path)`: ``(hf_name, float32 array)`` pairs, one tensor at a time, dequantized and
  in the HF PyTorch layout (a linear weight is ``[out, in]``), so a loader can place each tensor onto its
  sharding without holding two copies of the model on the host.

llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of the llama Q and K projections (HF "rotate half"
rotary -> interleaved pairs); we invert that permutation here. Qwen2 / Qwen3 files are written unpermuted.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from gadjax.paths import localize

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# GGUF tensor name (inside a block) -> HF name suffix inside ``model.layers.N.``.
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
# Consumed into the config (llama 3 rope scaling), not a model parameter.
_ROPE_FREQS = "rope_freqs.weight"


def gguf_field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The value of GGUF metadata ``key`` (strings decoded as UTF-8), or ``default`` when it is absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    if field.types and field.types[0] == GGUFValueType.STRING and isinstance(value, bytes):
        value = value.decode("utf-8")
    return value


class _Metadata:
    """Typed access to a GGUF file's key/value metadata with errors that name the file and key."""

    def __init__(self, path: str, reader: GGUFReader):
        self.path = path
        self.reader = reader
        self.arch = self.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return gguf_field(self.reader, key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.get(f"{self.arch}.{suffix}", default)

    def require(self, suffix: str) -> Any:
        key = f"{self.arch}.{suffix}"
        value = self.get(key)
        if value is None:
            raise ValueError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return value


def read_gguf(path: str | os.PathLike) -> GGUFReader:
    """The parsed GGUF file (read-only, memory-mapped). Parsing the metadata takes seconds (a 49k-token
    vocabulary is read field by field), and the model and its tokenizer read the same file, as does every
    run of a study in one process: the reader is shared while the file is unchanged (path, size, mtime)."""
    path = localize(path)  # gs:// -> a local copy (the reader memory-maps it)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    st = os.stat(path)
    return _read_gguf(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_gguf(path: str, size: int, mtime_ns: int) -> GGUFReader:
    try:
        return GGUFReader(path)
    except Exception as e:  # the gguf reader raises bare ValueErrors without the file name
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def _open(path: str | os.PathLike) -> tuple[str, GGUFReader, _Metadata]:
    path = os.fspath(path)
    reader = read_gguf(path)
    meta = _Metadata(path, reader)
    if meta.arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: unsupported GGUF architecture {meta.arch!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return path, reader, meta


def _f32(value: Any) -> float:
    """A float32 metadata value as the short decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _llama3_rope_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` table for Llama 3 rope scaling (divisors of each inverse frequency)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    divisor = np.where(wavelen < original / high, 1.0, divisor)
    return np.where(wavelen > original / low, factor, divisor)


# (low_freq_factor, high_freq_factor, original_max_position_embeddings) of released Llama 3.x models;
# GGUF stores only the resulting table, so we recognise it by recomputing these candidates.
_LLAMA3_ROPE_CANDIDATES = ((1.0, 4.0, 8192),)


def _rope_scaling(path: str, reader: GGUFReader, meta: _Metadata, head_dim: int, theta: float) -> dict | None:
    kind = meta.arch_key("rope.scaling.type")
    factor = meta.arch_key("rope.scaling.factor") or meta.arch_key("rope.scale_linear")
    if kind in ("linear", None) and factor and float(factor) != 1.0:
        return {"rope_type": "linear", "factor": _f32(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": _f32(factor)}
        original = meta.arch_key("rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        for suffix, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = meta.arch_key(f"rope.scaling.{suffix}")
            if value is not None:
                scaling[name] = _f32(value)
        return scaling
    if kind not in (None, "none", "linear"):
        raise ValueError(f"{path}: unsupported rope scaling type {kind!r}")
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is None:
        return None
    table = np.asarray(dequantize(freqs.data, freqs.tensor_type), dtype=np.float64).reshape(-1)
    factor = _f32(table.max())
    for low, high, original in _LLAMA3_ROPE_CANDIDATES:
        expected = _llama3_rope_factors(head_dim, theta, factor, low, high, original)
        if expected.shape == table.shape and np.allclose(expected, table, rtol=1e-4):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
    raise ValueError(
        f"{path}: tensor {_ROPE_FREQS!r} does not match Llama 3 rope scaling with any known "
        f"(low_freq_factor, high_freq_factor, original_max_position_embeddings) in {_LLAMA3_ROPE_CANDIDATES}"
    )


def read_gguf_config(path: str | os.PathLike) -> dict:
    """The Hugging Face ``config.json`` dict for a llama / qwen2 / qwen3 GGUF file.

    ``tie_word_embeddings`` is true when the file has no ``output.weight`` (llama.cpp then reuses
    ``token_embd``); ``rope_scaling`` is present only when the file scales rotary frequencies.
    Raises ValueError naming the file for an unsupported architecture or a missing key.
    """
    path, reader, meta = _open(path)
    return _config(path, reader, meta)


def _config(path: str, reader: GGUFReader, meta: _Metadata) -> dict:
    names = {t.name for t in reader.tensors}
    hidden = int(meta.require("embedding_length"))
    heads = int(meta.require("attention.head_count"))
    kv_heads = int(meta.arch_key("attention.head_count_kv", heads))
    # qwen3 heads are wider than hidden/heads; key_length is authoritative when present.
    head_dim = meta.arch_key("attention.key_length") or meta.arch_key("rope.dimension_count")
    head_dim = int(head_dim or hidden // heads)
    theta = _f32(meta.arch_key("rope.freq_base", 10000.0))
    vocab = meta.arch_key("vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError(f"{path}: neither {meta.arch}.vocab_size nor tokenizer.ggml.tokens is present")
        vocab = len(tokens.data)
    config: dict[str, Any] = {
        "model_type": meta.arch,
        "architectures": [_HF_ARCHITECTURES[meta.arch]],
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(meta.require("feed_forward_length")),
        "num_hidden_layers": int(meta.require("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(meta.require("attention.layer_norm_rms_epsilon")),
        "rope_theta": theta,
        "max_position_embeddings": int(meta.arch_key("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
    }
    rope_scaling = _rope_scaling(path, reader, meta, head_dim, theta)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    if meta.arch == "qwen2" and not config["attention_bias"]:
        raise ValueError(f"{path}: qwen2 GGUF without blk.0.attn_q.bias (Qwen2 attention has q/k/v biases)")
    for key in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(token_id)
    return config


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for every tensor a file of this config may hold."""
    h, inter, v, d = (config[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "head_dim"))
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    block = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (d,),
        "self_attn.k_norm.weight": (d,),
        "mlp.gate_proj.weight": (inter, h),
        "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
    }
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{layer}.{k}": s for k, s in block.items()})
    return shapes


def _required_names(config: dict) -> set[str]:
    """HF parameter names a file of this config must hold."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    block = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ] + [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    if config["attention_bias"]:
        block += [f"self_attn.{p}_proj.bias" for p in "qkv"]
    if config["model_type"] == "qwen3":
        block += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    for layer in range(config["num_hidden_layers"]):
        names.update(f"model.layers.{layer}.{k}" for k in block)
    return names


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF parameter name for a llama.cpp tensor name, or None if it has no HF counterpart."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.match(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    return None


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``LlamaModel.permute`` on Q or K rows (weight ``[out, ...]`` or bias ``[out]``).

    llama.cpp reshapes rows as ``(heads, 2, head_dim/2)`` and swaps the last two axes so that rotary pairs
    are interleaved; the inverse reshapes as ``(heads, head_dim/2, 2)`` and swaps back.
    """
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def iter_gguf_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(hf_name, float32 array in HF layout)`` for every parameter in a GGUF file, one at a time.

    Quantized tensors are dequantized with ``gguf.quants.dequantize``; llama Q/K rows are un-permuted.
    Raises ValueError naming the file and tensor for an unknown tensor, an unexpected shape, or (after the
    last tensor) a required tensor that the file lacks.
    """
    path, reader, meta = _open(path)
    config = _config(path, reader, meta)
    shapes = _expected_shapes(config)
    missing = _required_names(config)
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:
            continue  # folded into config["rope_scaling"]
        name = hf_tensor_name(tensor.name)
        if name is None or name not in shapes:
            raise ValueError(f"{path}: tensor {tensor.name!r} has no Hugging Face {meta.arch} counterpart")
        expected = shapes[name]
        # GGUF lists dims innermost-first; numpy order is the reverse, which is HF's [out, in].
        found = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if found != expected:
            raise ValueError(
                f"{path}: tensor {tensor.name!r} ({name}) has shape {found}, "
                f"expected {expected} from the config"
            )
        array = dequantize(tensor.data, tensor.tensor_type).reshape(expected)
        if meta.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = unpermute_rotary(array, config["num_attention_heads"])
        elif meta.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = unpermute_rotary(array, config["num_key_value_heads"])
        # Never hand out a view into the memory-mapped file (unquantized tensors dequantize to views).
        if array.dtype != np.float32 or np.may_share_memory(array, tensor.data):
            array = np.array(array, dtype=np.float32, copy=True)
        missing.discard(name)
        yield name, array
    if missing:
        raise ValueError(
            f"{path}: missing tensors for {meta.arch}: {sorted(missing)[:8]} ({len(missing)} in total)"
        )
