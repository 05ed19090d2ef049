"""The decoder-only transformer of the Llama / Qwen2 / Qwen2.5 / Qwen3 families, in flax.nnx.

Layers are stacked (every per-layer parameter has a leading `layers` axis) and applied with
`jax.lax.scan`, so a 30-layer model compiles one layer body, as MaxText does. Every parameter carries
logical axis names in its `out_sharding` metadata; gadjax.parallel.rules maps them onto the mesh.

Inputs are token ids with an explicit attention mask and positions, so LEFT-padded batches (prompts)
and RIGHT-padded ones (responses) both work: positions = max(cumsum(mask) - 1, 0). Packed sequences
(several rows in one, gadjax.data.packing) also pass `segment_ids`: no token attends across rows.

KV cache: `init_cache` allocates heads-major [layers, batch, kv_heads, max_len, head_dim] keys and
values (read in place by attention, see layers.attention) plus a slot-validity mask and a write
index; calling the model with `cache=` writes the new tokens at the index (prefill: the whole prompt;
decode: one token) and attends over everything cached so far.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from gadjax.models import attention as A
from gadjax.models import layers as L
from gadjax.models import lora
from gadjax.models.config import ModelConfig
from gadjax.parallel.lookup import take_rows
from gadjax.parallel.rules import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def param(value: jax.Array, names: tuple[str, ...]) -> nnx.Param:
    """An nnx.Param with logical axis names (sharding is applied later, by the rule table)."""
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


@flax.struct.dataclass
class KVCache:
    """Keys/values [L, B, Hkv, S, D], slot mask [B, S] (1 = holds a real token), next write index."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes + self.mask.nbytes)


def kv_cache_bytes(config: ModelConfig, batch: int, max_length: int, dtype: Any) -> int:
    """Bytes of a KV cache for (batch, max_length): 2 x layers x batch x length x kv_heads x head_dim."""
    per = jnp.dtype(dtype).itemsize
    return 2 * config.num_layers * batch * max_length * config.num_kv_heads * config.head_dim * per


class Blocks(nnx.Module):
    """All transformer layers' parameters, stacked along a leading `layers` axis."""

    def __init__(
        self, cfg: ModelConfig, rngs: nnx.Rngs, param_dtype: Any = jnp.float32, init_std: float = 0.02
    ):
        n, h, d, m = cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        nh, nkv = cfg.num_heads, cfg.num_kv_heads

        def normal(*shape: int) -> jax.Array:
            return init_std * jax.random.normal(rngs.params(), shape, param_dtype)

        self.attn_norm = param(jnp.ones((n, h), param_dtype), ("layers", "norm"))
        self.q = param(normal(n, h, nh, d), ("layers", "embed", "heads", "head_dim"))
        self.k = param(normal(n, h, nkv, d), ("layers", "embed", "kv_heads", "head_dim"))
        self.v = param(normal(n, h, nkv, d), ("layers", "embed", "kv_heads", "head_dim"))
        self.o = param(normal(n, nh, d, h), ("layers", "heads", "head_dim", "embed"))
        if cfg.attention_bias:
            self.q_bias = param(jnp.zeros((n, nh, d), param_dtype), ("layers", "heads", "head_dim"))
            self.k_bias = param(jnp.zeros((n, nkv, d), param_dtype), ("layers", "kv_heads", "head_dim"))
            self.v_bias = param(jnp.zeros((n, nkv, d), param_dtype), ("layers", "kv_heads", "head_dim"))
        if cfg.qk_norm:
            self.q_norm = param(jnp.ones((n, d), param_dtype), ("layers", "norm"))
            self.k_norm = param(jnp.ones((n, d), param_dtype), ("layers", "norm"))
        self.mlp_norm = param(jnp.ones((n, h), param_dtype), ("layers", "norm"))
        self.gate = param(normal(n, h, m), ("layers", "embed", "mlp"))
        self.up = param(normal(n, h, m), ("layers", "embed", "mlp"))
        self.down = param(normal(n, m, h), ("layers", "mlp", "embed"))

    def arrays(self) -> dict[str, jax.Array]:
        """The raw stacked arrays, keyed by parameter name (what the scanned layer body consumes)."""
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


def _layer(
    x: jax.Array,
    p: dict[str, jax.Array],
    cfg: ModelConfig,
    cos: jax.Array,
    sin: jax.Array,
    key_valid: jax.Array,
    mask: jax.Array | None,
    cached: tuple[jax.Array, jax.Array, jax.Array] | None,
    backend: str = "xla",
    lora_scale: float | None = None,
    materialize_grads: bool = False,
    segments: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One pre-norm transformer layer; returns the new hidden state and this layer's new k, v.
    `p` may hold LoRA adapters (`q_lora_a`, ...), applied unmerged with `lora_scale`.
    `materialize_grads`: see layers.dense."""
    dt = x.dtype
    p = {k: v.astype(dt) for k, v in p.items()}
    # As one [B*T, H*D] x [H*D, hidden] matmul: the 3-index einsum made XLA copy-transpose `o` per call.
    p["o"] = p["o"].reshape(-1, p["o"].shape[-1])

    def project(x_in: jax.Array, name: str) -> jax.Array:
        """x_in @ weight `name`, plus its LoRA delta when it has adapters (gadjax.models.lora)."""
        y = L.dense(x_in, p[name], materialize_grads=materialize_grads)
        if f"{name}_lora_a" not in p:
            return y
        return y + lora.delta(x_in, p[f"{name}_lora_a"], p[f"{name}_lora_b"], lora_scale)

    h = L.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q, k, v = project(h, "q"), project(h, "k"), project(h, "v")
    if cfg.attention_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if cfg.qk_norm:
        q = L.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = L.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = constrain(L.apply_rope(q, cos, sin), ("batch", "length", "act_heads", "head_dim"))
    k = L.apply_rope(k, cos, sin)
    attn = A.attend(backend, q, k, v, key_valid, mask, cached, segments)
    b, t = x.shape[:2]
    x = x + project(attn.reshape(b, t, -1), "o")
    x = constrain(x, ("batch", "length", "act_embed"))
    x = x + L.swiglu(L.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps), project)
    return constrain(x, ("batch", "length", "act_embed")), (k, v)


class Decoder(nnx.Module):
    """Causal LM backbone + (optional) LM head for Llama / Qwen2 / Qwen3 configs.

    `dtype` is the compute dtype (bf16 on accelerators, f32 on CPU); parameters stay in `param_dtype`
    (f32 master weights) and are cast inside each layer. `attention` names the attention backend
    (gadjax.models.attention.BACKENDS); "auto" is resolved here, for jax's default platform.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: str = "none",
        attention: str = "xla",
        with_lm_head: bool = True,
        materialize_grads: bool | None = None,
    ):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}: expected one of {sorted(REMAT_POLICIES)}")
        self.config = config
        self.dtype = dtype
        self.remat = remat
        # Explicit backends are kept as given (gadjax.plan builds TPU programs on a CPU host); the trainer
        # checks them against its platform with A.resolve.
        self.attention = A.resolve(attention, dtype=dtype) if attention == "auto" else attention
        if self.attention not in A.BACKENDS:
            raise ValueError(f"attention={attention!r}: expected one of {A.BACKENDS}")
        # None: on for jax's default platform when it is the CPU, where it speeds up the backward pass
        # (layers.dense); a TPU program built on a CPU host (gadjax.plan) passes False.
        if materialize_grads is None:
            materialize_grads = jax.default_backend() == "cpu"
        self.materialize_grads = bool(materialize_grads)
        h, vsz = config.hidden_size, config.vocab_size
        self.embed = param(0.02 * jax.random.normal(rngs.params(), (vsz, h), param_dtype), ("vocab", "embed"))
        self.blocks = Blocks(config, rngs, param_dtype)
        self.final_norm = param(jnp.ones((h,), param_dtype), ("norm",))
        self.has_lm_head = with_lm_head and not config.tie_word_embeddings
        if self.has_lm_head:
            self.lm_head = param(
                0.02 * jax.random.normal(rngs.params(), (h, vsz), param_dtype), ("embed", "vocab")
            )

    def init_cache(self, batch: int, max_length: int, dtype: Any | None = None) -> KVCache:
        cfg = self.config
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_length, cfg.head_dim)
        dt = dtype or self.dtype
        return KVCache(
            k=jnp.zeros(shape, dt),
            v=jnp.zeros(shape, dt),
            mask=jnp.zeros((batch, max_length), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        # A sharded lookup: a plain take made GSPMD rematerialize the output in full (parallel.lookup).
        x = take_rows(self.embed[...], input_ids, self.dtype)
        return constrain(x, ("batch", "length", "act_embed"))

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        cache: KVCache | None = None,
        *,
        cache_is_empty: bool = False,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Hidden states after the final norm, [B, T, hidden], and the updated cache (or None).

        input_ids, positions, attention_mask: [B, T]. With a cache, the T tokens are written at
        cache.index and attend to all valid cached slots before them. cache_is_empty=True (a prefill
        into a fresh cache) skips reading the cache: it has no valid slot yet, and attending over its
        zeros cost prefill FLOPs and made XLA constant-fold the scores of the zero cache at compile time.
        segment_ids [B, T] (packed rows: 0 = padding, k = the k-th row): attention stays within a row;
        positions then restart at 0 on each row (the caller's job, gadjax.data.packing).
        """
        cfg = self.config
        mask_new = attention_mask.astype(bool)
        t = input_ids.shape[1]
        backend = self.attention
        # The dense [B, T, T] mask only for the backends that read it; flash / splash mask per block.
        new_mask = A.causal_mask(mask_new, segment_ids) if backend in A.DENSE_MASK else None
        cos, sin = L.rope_cos_sin(positions, rope_inv_freq_for(cfg))
        x = self.embed_tokens(input_ids)

        read_cache = cache is not None and not cache_is_empty
        lora_scale = getattr(self.blocks, "lora_scale", None)  # set by gadjax.models.lora.attach

        def body(x, layer):
            if not read_cache:
                p, cached = layer, None
            else:
                p, k_cache, v_cache = layer
                slots = jnp.arange(cache.max_length)
                # Slots written before this call, and valid (not left padding).
                cache_mask = (cache.mask.astype(bool) & (slots[None, :] < cache.index))[:, None, :]
                cached = (k_cache, v_cache, jnp.broadcast_to(cache_mask, (x.shape[0], t, cache.max_length)))
            return _layer(
                x,
                p,
                cfg,
                cos,
                sin,
                mask_new,
                new_mask,
                cached,
                backend,
                lora_scale,
                self.materialize_grads,
                segment_ids,
            )

        policy = REMAT_POLICIES[self.remat]
        if self.remat != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        params = self.blocks.arrays()
        xs = (params, cache.k, cache.v) if read_cache else params
        x, (k_new, v_new) = jax.lax.scan(body, x, xs)
        x = L.rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)

        if cache is None:
            return x, None
        idx = cache.index
        # [L, B, T, Hkv, D] -> heads-major [L, B, Hkv, T, D], written in place at the index.
        k_new, v_new = jnp.swapaxes(k_new, 2, 3), jnp.swapaxes(v_new, 2, 3)
        cache = KVCache(
            k=jax.lax.dynamic_update_slice(cache.k, k_new.astype(cache.k.dtype), (0, 0, 0, idx, 0)),
            v=jax.lax.dynamic_update_slice(cache.v, v_new.astype(cache.v.dtype), (0, 0, 0, idx, 0)),
            mask=jax.lax.dynamic_update_slice(cache.mask, attention_mask.astype(jnp.int32), (0, idx)),
            index=idx + t,
        )
        return x, cache

    def output_embedding(self) -> jax.Array:
        """The LM head as [hidden, vocab] (the transposed embedding when tied)."""
        if self.has_lm_head:
            return self.lm_head[...]
        return self.embed[...].T

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits [B, T, vocab]. Use gadjax.algo.logprobs for long sequences (chunked)."""
        w = self.output_embedding().astype(hidden.dtype)
        out = jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "act_vocab"))


def rope_inv_freq_for(config: ModelConfig) -> jax.Array:
    return L.rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions for left- or right-padded rows: count of real tokens before each one (0 on padding)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
