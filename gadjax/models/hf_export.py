"""Hugging Face export: a gadjax Decoder / Discriminator as a transformers-loadable directory (safetensors
in HF layout, config.json, generation_config.json, the tokenizer). The inverse of gadjax.models.hf_io's
loading, through the same name mapping; only process 0 writes, every process takes part in the gathers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from gadjax.models.config import EXPORT_DTYPES
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator
from gadjax.models.hf_io import mapping_for, param_paths
from gadjax.parallel.distributed import host_array
from gadjax.storage import write_dir_when_complete

# numpy dtypes for EXPORT_DTYPES; safetensors writes ml_dtypes' bfloat16 as BF16.
_NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def export_dtype(model: Decoder | Discriminator, dtype: str | None) -> str:
    """`dtype`, or the model's own (its source checkpoint's torch_dtype) when None / ""; ValueError names
    the accepted ones."""
    dtype = dtype or model.config.source_dtype
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    return dtype


def iter_hf_tensors(
    model: Decoder | Discriminator, dtype: str = "float32"
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array in HF layout, in `dtype`) for every parameter, one layer slice at a time. The layout
    change runs in float32; the cast comes last (one rounding from the trained weights)."""
    cfg = model.config
    np_dtype = _NP_DTYPES[dtype]

    def cast(name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
        out = np.ascontiguousarray(arr.astype(np_dtype))
        if dtype == "float16" and not np.isfinite(out).all():  # |w| > 65504 overflows float16
            raise ValueError(f"export dtype float16: {name} has values beyond float16's range; use bfloat16")
        return name, out

    for path, leaf in param_paths(nnx.state(model, nnx.Param)).items():
        m = mapping_for(path)
        arr = host_array(leaf[...]).astype(np.float32)
        if m.per_layer:
            for i in range(cfg.num_layers):
                yield cast(m.hf_name.format(i=i), m.to_hf(arr[i], cfg))
        else:
            yield cast(m.hf_name, m.to_hf(arr, cfg))


def save_hf_checkpoint(
    model: Decoder | Discriminator,
    out_dir: str,
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = 2 << 30,
    dtype: str | None = None,
) -> str:
    """Write a transformers-loadable directory. A Discriminator is written as *ForSequenceClassification
    (num_labels=1), which also scores the last non-padding token. Only process 0 writes.

    dtype: the weights' dtype on disk (bfloat16 / float16 / float32); None: the model's own, i.e. the
    source checkpoint's torch_dtype (float32 for random init and GGUF). config.json says which."""
    cfg = model.config
    is_disc = isinstance(model, Discriminator)
    dtype = export_dtype(model, dtype)
    tensors = iter_hf_tensors(model, dtype)
    if jax.process_index() != 0:
        for _ in tensors:  # every process must take part in the gathers
            pass
        return out_dir
    # Written to <out_dir>.partial first: a full disk mid-export leaves the previous export untouched.
    with write_dir_when_complete(out_dir, "Hugging Face export") as partial:
        _write_hf_dir(partial, tensors, cfg, is_disc, tokenizer, max_shard_bytes, dtype)
    return out_dir


def _write_hf_dir(
    out_dir: str, tensors: Any, cfg: Any, is_disc: bool, tokenizer: Any, max_shard_bytes: int, dtype: str
) -> None:
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors:
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = (
            "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    if len(shards) > 1:
        total = sum(a.nbytes for s in shards for a in s.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    hf_cfg = cfg.to_hf_dict(dtype)
    if is_disc:
        hf_cfg["architectures"] = [
            hf_cfg["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")
        ]
        hf_cfg["num_labels"] = 1
        hf_cfg["id2label"] = {"0": "LABEL_0"}
        hf_cfg["label2id"] = {"LABEL_0": 0}
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        hf_cfg["pad_token_id"] = tokenizer.pad_token_id
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2)
    gen = {"_from_model_config": False}
    if cfg.bos_token_id is not None:
        gen["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:
        gen["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_ids[0]
    if "pad_token_id" in hf_cfg:
        gen["pad_token_id"] = hf_cfg["pad_token_id"]
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=2)
    if tokenizer is not None:
        from gadjax.models.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, out_dir)
