"""Model configuration: one dataclass for the Llama and Qwen decoder families, read from a HF config.json.

Real checkpoints come in two dialects for rotary settings: transformers >= 5 writes
`rope_parameters` ({"rope_theta", "rope_type", ...}); older ones write top-level `rope_theta` and
`rope_scaling`. Both are read here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from gadjax.paths import localize

# model_type -> family traits. Qwen2 always has q/k/v biases; Qwen3 normalises q and k per head.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A config.json that gadjax cannot build a model from; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None  # rope_type + its parameters; None = default rope
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 family)
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3 family)
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # The original HF dict, written back (updated) on export so nothing a user relies on is lost.
    hf_config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def num_query_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def param_count(self) -> int:
        """Number of parameters of the causal LM (embeddings counted once when tied)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * d * h
        if self.attention_bias:
            attn += d * (self.num_heads + 2 * self.num_kv_heads)
        if self.qk_norm:
            attn += 2 * d
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h

    @property
    def source_dtype(self) -> str:
        """The checkpoint's own weight dtype (config.json ``torch_dtype`` / transformers-5 ``dtype``), one of
        EXPORT_DTYPES; float32 when it names none (random init, GGUF: dequantized to float32)."""
        for key in ("torch_dtype", "dtype"):
            value = self.hf_config.get(key)
            if isinstance(value, str) and value in EXPORT_DTYPES:
                return value
        return "float32"

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face config dict. `source` names the file in error messages."""

        def need(key: str) -> Any:
            if key not in cfg or cfg[key] is None:
                raise ConfigError(f"{source}: missing required field '{key}'")
            return cfg[key]

        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            arch = cfg.get("architectures")
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r} (architectures={arch}); "
                f"gadjax supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if cfg.get("mlp_bias"):
            raise ConfigError(f"{source}: field 'mlp_bias'=true is not supported")
        if cfg.get("use_sliding_window"):
            raise ConfigError(f"{source}: field 'use_sliding_window'=true is not supported")

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ConfigError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = int(cfg.get("head_dim") or hidden // heads)

        rope_theta, rope_scaling = _read_rope(cfg, source)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        if model_type == "qwen2":
            attention_bias = True
        else:
            attention_bias = bool(cfg.get("attention_bias", False))

        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            hf_config=dict(cfg),
        )

    @classmethod
    def from_file(cls, path: str) -> ModelConfig:
        """Read `path` (a config.json, or a directory holding one; local or gs://)."""
        path = localize(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (expected a Hugging Face config.json)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        return cls.from_hf_dict(cfg, source=path)

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """A config.json dict transformers loads, for weights stored in `dtype`; starts from the imported
        dict so extra keys survive."""
        out = dict(self.hf_config)
        out.update(
            model_type=self.model_type,
            architectures=[_ARCHITECTURES[self.model_type]],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={
                "rope_theta": self.rope_theta,
                **(self.rope_scaling or {"rope_type": "default"}),
            },
        )
        out.pop("rope_theta", None)
        out.pop("rope_scaling", None)
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            out["eos_token_id"] = (
                list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else self.eos_token_ids[0]
            )
        # transformers 5 reads "dtype", older versions and most tooling "torch_dtype": both say the same.
        out["dtype"] = out["torch_dtype"] = dtype
        return out


# Weight dtypes an export can be written in (config.json names them this way).
EXPORT_DTYPES = ("bfloat16", "float16", "float32")

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _read_rope(cfg: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """Return (theta, scaling) from either the transformers-5 or the older config dialect."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else {}
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: field 'rope_type'={rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return float(theta), None
    return float(theta), {"rope_type": rope_type, **scaling}
