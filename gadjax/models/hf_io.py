"""Hugging Face checkpoints in and out, tensor by tensor, straight into their target shardings.

Import: a HF directory (config.json + model.safetensors or a sharded index) or a GGUF file. Tensors
stream one at a time from the file (safetensors is memory-mapped; GGUF is dequantized per tensor);
each gadjax parameter is assembled in one host buffer (per-layer tensors stacked along `layers`) and
placed on the devices with `jax.make_array_from_callback`, so each device receives only its shard and
the host never holds two full copies of the model.

Export: config.json, model safetensors (sharded with an index past `max_shard_bytes`),
generation_config.json and the tokenizer files, loadable by transformers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator, fresh_head
from gadjax.models.sharding import logical_names
from gadjax.parallel.rules import DEFAULT_RULES, Rules, named_sharding
from gadjax.paths import localize

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint gadjax cannot load; names the file, the tensor and expected vs found shape."""


@dataclasses.dataclass(frozen=True)
class _Mapping:
    """How one gadjax parameter relates to HF tensors: name template and layout transforms."""

    hf_name: str  # may contain {i} for the layer index
    hf_shape: Callable[[ModelConfig], tuple[int, ...]]
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]
    per_layer: bool = True


def _ident(x: np.ndarray, c: ModelConfig) -> np.ndarray:
    return x


def _t(x: np.ndarray, c: ModelConfig) -> np.ndarray:
    return x.T


def _proj(heads: Callable[[ModelConfig], int]) -> _Mapping:
    """q/k/v projections: HF [heads*head_dim, hidden] <-> ours [hidden, heads, head_dim]."""
    return _Mapping(
        "",
        lambda c: (heads(c) * c.head_dim, c.hidden_size),
        lambda x, c: x.reshape(heads(c), c.head_dim, c.hidden_size).transpose(2, 0, 1),
        lambda x, c: x.transpose(1, 2, 0).reshape(heads(c) * c.head_dim, c.hidden_size),
    )


def _bias(heads: Callable[[ModelConfig], int]) -> _Mapping:
    return _Mapping(
        "",
        lambda c: (heads(c) * c.head_dim,),
        lambda x, c: x.reshape(heads(c), c.head_dim),
        lambda x, c: x.reshape(-1),
    )


def _nh(c: ModelConfig) -> int:
    return c.num_heads


def _nkv(c: ModelConfig) -> int:
    return c.num_kv_heads


_P = "model.layers.{i}."
_LAYER_MAPPINGS: dict[str, _Mapping] = {
    "attn_norm": _Mapping(_P + "input_layernorm.weight", lambda c: (c.hidden_size,), _ident, _ident),
    "q": dataclasses.replace(_proj(_nh), hf_name=_P + "self_attn.q_proj.weight"),
    "k": dataclasses.replace(_proj(_nkv), hf_name=_P + "self_attn.k_proj.weight"),
    "v": dataclasses.replace(_proj(_nkv), hf_name=_P + "self_attn.v_proj.weight"),
    "o": _Mapping(
        _P + "self_attn.o_proj.weight",
        lambda c: (c.hidden_size, c.num_heads * c.head_dim),
        lambda x, c: x.reshape(c.hidden_size, c.num_heads, c.head_dim).transpose(1, 2, 0),
        lambda x, c: x.transpose(2, 0, 1).reshape(c.hidden_size, c.num_heads * c.head_dim),
    ),
    "q_bias": dataclasses.replace(_bias(_nh), hf_name=_P + "self_attn.q_proj.bias"),
    "k_bias": dataclasses.replace(_bias(_nkv), hf_name=_P + "self_attn.k_proj.bias"),
    "v_bias": dataclasses.replace(_bias(_nkv), hf_name=_P + "self_attn.v_proj.bias"),
    "q_norm": _Mapping(_P + "self_attn.q_norm.weight", lambda c: (c.head_dim,), _ident, _ident),
    "k_norm": _Mapping(_P + "self_attn.k_norm.weight", lambda c: (c.head_dim,), _ident, _ident),
    "mlp_norm": _Mapping(_P + "post_attention_layernorm.weight", lambda c: (c.hidden_size,), _ident, _ident),
    "gate": _Mapping(_P + "mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), _t, _t),
    "up": _Mapping(_P + "mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), _t, _t),
    "down": _Mapping(_P + "mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size), _t, _t),
}
_TOP_MAPPINGS: dict[str, _Mapping] = {
    "embed": _Mapping(
        "model.embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size), _ident, _ident, False
    ),
    "final_norm": _Mapping("model.norm.weight", lambda c: (c.hidden_size,), _ident, _ident, False),
    "lm_head": _Mapping("lm_head.weight", lambda c: (c.vocab_size, c.hidden_size), _t, _t, False),
    # Discriminator head <-> *ForSequenceClassification's `score` [num_labels=1, hidden].
    "head": _Mapping(
        "score.weight", lambda c: (1, c.hidden_size), lambda x, c: x[0], lambda x, c: x[None], False
    ),
}
# Tensors some checkpoints carry that gadjax derives instead.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def param_paths(state: nnx.State) -> dict[str, Any]:
    """Flat {"blocks/q": abstract leaf, ...} for the Params of a model's state."""
    return {"/".join(str(k) for k in path): leaf for path, leaf in nnx.to_flat_state(state)}


def mapping_for(path: str) -> _Mapping:
    name = path.split("/")[-1]
    return _LAYER_MAPPINGS[name] if "/blocks/" in f"/{path}" else _TOP_MAPPINGS[name]


# --- reading tensors -------------------------------------------------------------------------------


def iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray, str]]:
    """(name, float32 array, file) for every tensor of a HF directory, one at a time."""
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for fname in files:
        full = os.path.join(path, fname)
        with safe_open(full, framework="numpy") as f:
            for name in f.keys():
                yield name, _to_f32(f, name, full), full


def _to_f32(f: Any, name: str, full: str) -> np.ndarray:
    try:
        return np.asarray(f.get_tensor(name), dtype=np.float32)
    except TypeError:  # bf16 has no numpy dtype in safetensors' numpy backend: go through torch-free path
        from safetensors import safe_open

        with safe_open(full, framework="flax") as g:
            return np.asarray(g.get_tensor(name), dtype=np.float32)


def _iter_source(path: str) -> tuple[ModelConfig, Iterator[tuple[str, np.ndarray, str]]]:
    if path.endswith(".gguf"):
        from gadjax.models import gguf

        cfg = ModelConfig.from_hf_dict(gguf.read_gguf_config(path), source=path)
        return cfg, ((n, t, path) for n, t in gguf.iter_gguf_tensors(path))
    return ModelConfig.from_file(path), iter_safetensors(path)


# --- assembling parameters -------------------------------------------------------------------------


def _shardings(state: nnx.State, mesh: Mesh | None, rules: Rules) -> dict[str, jax.sharding.Sharding]:
    out = {}
    for path, leaf in param_paths(state).items():
        names = logical_names(leaf)
        if mesh is None:
            out[path] = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            out[path] = named_sharding(names, leaf.shape, mesh, rules)
    return out


def _load_into(
    abstract: nnx.Module,
    cfg: ModelConfig,
    tensors: Iterator[tuple[str, np.ndarray, str]],
    mesh: Mesh | None,
    rules: Rules,
    provided: dict[str, jax.Array] | None = None,
) -> nnx.Module:
    """Fill an abstract module's Params from `tensors`; `provided` = {our path: array} needs no tensor."""
    graphdef, state = nnx.split(abstract)
    paths = param_paths(state)
    shardings = _shardings(state, mesh, rules)
    # HF name -> (our path, layer index or None)
    wanted: dict[str, tuple[str, int | None]] = {}
    for path in paths:
        m = mapping_for(path)
        if provided and path in provided:
            continue
        if m.per_layer:
            for i in range(cfg.num_layers):
                wanted[m.hf_name.format(i=i)] = (path, i)
        else:
            wanted[m.hf_name] = (path, None)
    buffers: dict[str, np.ndarray] = {}
    filled: dict[str, int] = {}
    arrays: dict[str, jax.Array] = dict(provided or {})
    source = "checkpoint"
    unexpected = []
    for name, tensor, source in tensors:
        if name not in wanted:
            if not _IGNORED.match(name) and not (name == "lm_head.weight" and cfg.tie_word_embeddings):
                unexpected.append(name)
            continue
        path, layer = wanted.pop(name)
        m = mapping_for(path)
        expected = m.hf_shape(cfg)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {expected} "
                f"(config: hidden={cfg.hidden_size}, heads={cfg.num_heads}, kv_heads={cfg.num_kv_heads}, "
                f"head_dim={cfg.head_dim}, mlp={cfg.intermediate_size}, vocab={cfg.vocab_size})"
            )
        ours = m.to_ours(tensor, cfg)
        leaf = paths[path]
        if layer is None:
            buf = np.ascontiguousarray(ours, dtype=leaf.dtype)
        else:
            buf = buffers.get(path)
            if buf is None:
                buf = buffers[path] = np.empty(leaf.shape, dtype=leaf.dtype)
            buf[layer] = ours
            filled[path] = filled.get(path, 0) + 1
            if filled[path] < cfg.num_layers:
                continue
            del buffers[path]
        arrays[path] = jax.make_array_from_callback(buf.shape, shardings[path], lambda idx, b=buf: b[idx])
    if wanted:
        missing = sorted(wanted)[:5]
        raise CheckpointError(f"{source}: missing {len(wanted)} tensor(s), e.g. {missing}")
    if unexpected:
        log.warning("%s: ignored %d unexpected tensor(s), e.g. %s", source, len(unexpected), unexpected[:5])

    def put(path_tuple: tuple, leaf: Any) -> Any:
        key = "/".join(str(k) for k in path_tuple)
        return leaf.replace(arrays[key]) if key in arrays else leaf

    flat = [(p, put(p, leaf)) for p, leaf in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def abstract_decoder(cfg: ModelConfig, **kwargs: Any) -> Decoder:
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), **kwargs))


def load_decoder(
    path: str, *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, **model_kwargs: Any
) -> Decoder:
    """Load a HF directory or GGUF file as a Decoder, each parameter placed in its sharding.

    model_kwargs go to Decoder (dtype, param_dtype, remat, attention). A ``gs://`` path is downloaded once
    to this host's disk (gadjax.paths.localize).
    """
    path = localize(path)
    cfg, tensors = _iter_source(path)
    return _load_into(abstract_decoder(cfg, **model_kwargs), cfg, tensors, mesh, rules)


def load_discriminator(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    seed: int = 0,
    head_init: str = "normal",
    head_std: float = 0.02,
    **model_kwargs: Any,
) -> Discriminator:
    """A discriminator from a checkpoint. A student checkpoint gives the backbone and a fresh head
    (SPEC.md: D is initialised from the student); an exported discriminator (with `score.weight`) also
    gives its head."""
    path = localize(path)
    cfg, tensors = _iter_source(path)
    abstract = nnx.eval_shape(
        lambda: Discriminator(
            cfg, rngs=nnx.Rngs(seed), head_init=head_init, head_std=head_std, **model_kwargs
        )
    )
    has_head = os.path.isdir(path) and "score.weight" in _safetensor_names(path)
    provided = None
    if not has_head:
        sharding = NamedSharding(mesh, PartitionSpec()) if mesh is not None else jax.devices()[0]
        provided = {"head": jax.device_put(fresh_head(cfg, seed, head_init, head_std), sharding)}
    return _load_into(abstract, cfg, tensors, mesh, rules, provided)


def _safetensor_names(path: str) -> set[str]:
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            return set(json.load(f)["weight_map"])
    with safe_open(os.path.join(path, "model.safetensors"), framework="numpy") as f:
        return set(f.keys())
