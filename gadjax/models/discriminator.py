"""The GAD discriminator: the student's backbone plus a linear head hidden -> 1 (SPEC.md, "Players").

D(x, y) is the head output at the LAST VALID token of [chat-templated prompt ; response], normally the
EOS / end-of-turn token; there is no mean over tokens. The head has no bias: the Bradley-Terry loss
only sees score differences, and Hugging Face's *ForSequenceClassification `score` layer (our export
target) has none either.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder, param

HEAD_INITS = ("zero", "normal")


def last_valid_index(mask: jax.Array) -> jax.Array:
    """Index of the last 1 in each row of mask [B, T]; works for left, right and inner padding."""
    t = mask.shape[-1]
    return t - 1 - jnp.argmax(mask[:, ::-1].astype(bool), axis=-1)


class Discriminator(nnx.Module):
    """Backbone (a Decoder without LM head) + scalar head; `__call__` returns float32 scores [B].

    `param_dtype` is the head's and the backbone's; the other keyword arguments (`dtype`, `remat`,
    `attention`, `materialize_grads`) go to the backbone's `Decoder`, with its defaults."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        head_init: str = "normal",
        head_std: float = 0.02,
        **backbone_kwargs: Any,
    ):
        self.backbone = Decoder(
            config, rngs=rngs, param_dtype=param_dtype, with_lm_head=False, **backbone_kwargs
        )
        self.head = param(fresh_head(config, rngs.params(), head_init, head_std, param_dtype), ("embed",))

    @property
    def config(self) -> ModelConfig:
        return self.backbone.config

    def __call__(self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array) -> jax.Array:
        hidden, _ = self.backbone(input_ids, positions, attention_mask)
        idx = last_valid_index(attention_mask)
        last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
        return jnp.einsum("bd,d->b", last.astype(jnp.float32), self.head[...].astype(jnp.float32))

    def scores_at(
        self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array, index: jax.Array
    ) -> jax.Array:
        """Packed rows (gadjax.data.packing): float32 scores [S, J] read at `index` [S, J], the column of
        each row's last token in its sequence (SPEC.md: the score is the head at the last valid token).

        input_ids, positions, segment_ids: [S, L]; attention stays within a row. The read is a gather
        along each sequence, so it stays on the shard that holds the sequence."""
        hidden, _ = self.backbone(input_ids, positions, segment_ids > 0, segment_ids=segment_ids)
        last = jnp.take_along_axis(hidden, index[:, :, None], axis=1)  # [S, J, hidden]
        return jnp.einsum("sjd,d->sj", last.astype(jnp.float32), self.head[...].astype(jnp.float32))


def fresh_head(
    config: ModelConfig,
    key: jax.Array | int,
    head_init: str = "normal",
    std: float = 0.02,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """A new head vector [hidden]: zeros, or normal(0, std) like HF's `score` layer init."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init={head_init!r}: expected one of {HEAD_INITS}")
    if head_init == "zero":
        return jnp.zeros((config.hidden_size,), dtype)
    key = jax.random.key(key) if isinstance(key, int) else key
    return std * jax.random.normal(key, (config.hidden_size,), dtype)


def discriminator_from_decoder(
    student: Decoder, *, seed: int = 0, head_init: str = "normal", head_std: float = 0.02
) -> Discriminator:
    """A discriminator initialised from a student in memory: same backbone weights, fresh head.

    The backbone arrays are copied (not aliased) so donating the student's state in a train step never
    deletes the discriminator's buffers. Nothing is randomly initialised and thrown away.
    """
    cfg = student.config
    abstract = nnx.eval_shape(
        lambda: Discriminator(
            cfg,
            rngs=nnx.Rngs(seed),
            dtype=student.dtype,
            remat=student.remat,
            attention=student.attention,
            materialize_grads=student.materialize_grads,
            head_init=head_init,
            head_std=head_std,
        )
    )
    graphdef, state = nnx.split(abstract)
    src = {k: v for k, v in nnx.to_flat_state(nnx.state(student, nnx.Param))}
    head = fresh_head(cfg, seed, head_init, head_std)
    embed_sharding = student.embed[...].sharding
    if isinstance(embed_sharding, NamedSharding):  # replicate the small head on the student's mesh
        head = jax.device_put(head, NamedSharding(embed_sharding.mesh, PartitionSpec()))

    def fill(path: tuple, leaf: Any) -> Any:
        if path[0] == "head":
            return leaf.replace(head)
        return leaf.replace(jnp.copy(src[path[1:]][...]))

    flat = [(p, fill(p, leaf)) for p, leaf in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
