"""LoRA adapters as a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`) and back.

PEFT stores, per layer and projection, `lora_A.weight` [r, in] and `lora_B.weight` [out, r] in the
PyTorch layout (W is [out, in], y = x W^T), and applies W + (lora_alpha / r) * B A. gadjax's stacked
adapters are A [layers, in..., r], B [layers, r, out...] over the Hugging Face axis order (our q is
[embed, heads, head_dim] = q_proj.weight^T reshaped), so one layer's PEFT tensors are A[i].reshape(-1, r).T
and B[i].reshape(r, -1).T. `peft.PeftModel.from_pretrained(base, dir)` loads the written directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gadjax.models import lora
from gadjax.models.config import ModelConfig
from gadjax.paths import localize
from gadjax.storage import write_dir_when_complete

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_MODULE = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def _key(i: int, name: str, ab: str) -> str:
    return f"base_model.model.model.layers.{i}.{_MODULE[name]}.lora_{ab}.weight"


def _adapters(params: nnx.State) -> dict[str, jax.Array]:
    """{"q_lora_a": stacked array, ...} of a decoder's (or discriminator backbone's) LoRAParams."""
    flat = nnx.to_flat_state(params)
    return {str(p[-1]): leaf[...] for p, leaf in flat if str(p[-1]).endswith(("_lora_a", "_lora_b"))}


def save_peft_adapter(
    params: nnx.State, cfg: lora.LoraConfig, model_config: ModelConfig, out_dir: str, base_path: str = ""
) -> str:
    """Write the adapters in `params` (a LoRA student's trainable state) as a PEFT LoRA directory for a
    *ForCausalLM of `model_config`. Only process 0 writes (every process gathers)."""
    from safetensors.numpy import save_file

    from gadjax.parallel.distributed import host_array

    arrays = {k: np.asarray(host_array(v), np.float32) for k, v in _adapters(params).items()}
    if jax.process_index() != 0:
        return out_dir
    tensors = {}
    r = cfg.rank
    for name in cfg.targets:
        a, b = arrays[f"{name}_lora_a"], arrays[f"{name}_lora_b"]
        for i in range(model_config.num_layers):
            tensors[_key(i, name, "A")] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            tensors[_key(i, name, "B")] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(lora.TARGETS[n] for n in cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    # Staged and published as one unit (local or gs://): a reader never takes half an adapter.
    with write_dir_when_complete(out_dir, "PEFT adapter export") as partial:
        save_file(tensors, os.path.join(partial, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(partial, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return out_dir


def read_peft_adapter(path: str, model_config: ModelConfig) -> tuple[lora.LoraConfig, dict[str, np.ndarray]]:
    """(LoraConfig, {"q_lora_a": [layers, in..., r], ...}) from a PEFT LoRA directory for this model."""
    from safetensors.numpy import load_file

    path = localize(path)  # a gs:// adapter is downloaded once
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
        conf = json.load(f)
    if conf.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {conf.get('peft_type')!r}, only LORA adapters are supported")
    if conf.get("use_rslora") or conf.get("fan_in_fan_out"):
        raise ValueError(f"{path}: use_rslora / fan_in_fan_out adapters are not supported")
    tensors = load_file(os.path.join(path, WEIGHTS_FILE))
    if conf.get("bias", "none") != "none" or conf.get("modules_to_save"):
        raise ValueError(f"{path}: adapters with trained biases or modules_to_save are not supported")
    by_module = {v: k for k, v in lora.TARGETS.items()}
    targets = lora.resolve_targets([by_module.get(m.split(".")[-1], m) for m in conf["target_modules"]])
    r = int(conf["r"])
    shapes = _weight_shapes(model_config)
    out: dict[str, np.ndarray] = {}
    missing = [k for n in targets for ab in "AB" if (k := _key(0, n, ab)) not in tensors]
    if missing:
        raise ValueError(f"{path}: {WEIGHTS_FILE} lacks {missing[0]} (is it an adapter for this model?)")
    for name in targets:
        ins, outs = shapes[name]
        a = [tensors[_key(i, name, "A")].T.reshape(*ins, r) for i in range(model_config.num_layers)]
        b = [tensors[_key(i, name, "B")].T.reshape(r, *outs) for i in range(model_config.num_layers)]
        out[f"{name}_lora_a"], out[f"{name}_lora_b"] = np.stack(a), np.stack(b)
    return lora.LoraConfig(r, float(conf["lora_alpha"]), targets), out


def _weight_shapes(c: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input dims, output dims) of each adaptable weight, in gadjax's per-layer layout."""
    h, d, m = c.hidden_size, c.head_dim, c.intermediate_size
    return {
        "q": ((h,), (c.num_heads, d)),
        "k": ((h,), (c.num_kv_heads, d)),
        "v": ((h,), (c.num_kv_heads, d)),
        "o": ((c.num_heads, d), (h,)),
        "gate": ((h,), (m,)),
        "up": ((h,), (m,)),
        "down": ((m,), (h,)),
    }


def merge_peft_adapter(model: Any, path: str) -> Any:
    """`model` (a plain Decoder) with the PEFT adapter at `path` merged into its weights, in place."""
    cfg, arrays = read_peft_adapter(path, model.config)
    for name in cfg.targets:
        var = getattr(model.blocks, name)
        w = var[...]
        a, b = jnp.asarray(arrays[f"{name}_lora_a"]), jnp.asarray(arrays[f"{name}_lora_b"])
        var[...] = (w.astype(jnp.float32) + lora.delta_weight(a, b, cfg.scale)).astype(w.dtype)
    return model
