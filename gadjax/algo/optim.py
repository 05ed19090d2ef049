"""Optimizer for G and D: global-norm clipping, then AdamW (SPEC.md "Reference hyperparameters").

Matches verl's FSDP actor / critic optimizer: ``torch.optim.AdamW(module.parameters(), lr, betas,
weight_decay)`` stepped after ``clip_grad_norm_(max_norm=grad_clip)``, with the learning rate from
``get_constant_schedule_with_warmup`` or ``get_cosine_schedule_with_warmup`` (HF formulas). Two small,
documented differences: optax's global-norm clip scales by max_norm / norm (torch adds 1e-6 to the
norm), and a non-finite gradient is NOT skipped here (verl skips the step); the train step's NaN guard
owns that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

Schedule = Literal["constant", "warmup_cosine"]
DecayMask = Literal["all", "no_norm_bias"] | Callable[[Any], Any]


def make_schedule(
    lr: float,
    schedule: Schedule = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> optax.Schedule:
    """Learning rate as a function of the optimizer step count (0-based), as verl / HF define them.

    - ``constant``: lr * min(1, step / warmup_steps) (``get_constant_schedule_with_warmup``; with
      warmup_steps = 0 it is lr from the first step: the SPEC.md setting).
    - ``warmup_cosine``: linear 0 -> lr over warmup_steps, then
      lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress))) with
      progress = min(1, (step - warmup) / (total - warmup)) (``get_cosine_schedule_with_warmup``).
    """
    if warmup_steps < 0:
        raise ValueError(f"make_schedule: warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "constant":

        def const(step):
            step = jnp.asarray(step, jnp.float32)
            if warmup_steps == 0:
                return jnp.full((), lr, jnp.float32)
            return lr * jnp.minimum(1.0, step / warmup_steps)

        return const
    if schedule == "warmup_cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                "make_schedule: warmup_cosine needs total_steps > warmup_steps, got "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        decay = float(total_steps - warmup_steps)

        def cosine(step):
            step = jnp.asarray(step, jnp.float32)
            warm = step / max(1, warmup_steps)
            progress = jnp.clip((step - warmup_steps) / decay, 0.0, 1.0)
            cos = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
            return lr * jnp.where(step < warmup_steps, warm, cos)

        return cosine
    raise ValueError(f"make_schedule: unknown schedule {schedule!r}; expected 'constant' or 'warmup_cosine'")


def no_norm_bias_mask(params: Any) -> Any:
    """True for leaves that get weight decay: arrays with ndim >= 2 (matmul kernels, embeddings).

    Norm scales and biases are 1-D. Decaying them pulls RMSNorm gains toward 0 (shrinking every
    activation, which the next layers must undo) and biases toward 0, i.e. it regularises a scale /
    offset, not model capacity: the common practice (GPT-2/3, LLaMA recipes) exempts them.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by min(1, max_norm / ||g||): ``optax.clip_by_global_norm``'s result (to
    rounding) and its (empty) state, so checkpoints are interchangeable.

    optax writes the clip as ``select(norm < max_norm, g, g / norm * max_norm)``. The element-wise
    divide counts as expensive to XLA, so it materialises the clipped gradients once for their three
    consumers (both moments and the update): an extra read and write of every gradient. One scalar
    factor is cheap to recompute inside each consumer's fusion, so the clipped copy never exists.
    """

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        factor = jnp.minimum(1.0, max_norm / g_norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _clip_adamw(learning_rate, b1, b2, eps, weight_decay, grad_clip_norm, mask):
    adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    if grad_clip_norm is None:
        return adamw
    return optax.chain(clip_by_global_norm(grad_clip_norm), adamw)


def make_optimizer(
    lr: float,
    schedule: Schedule = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    grad_clip_norm: float | None = 0.2,
    min_lr_ratio: float = 0.0,
    weight_decay_mask: DecayMask = "all",
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW, with the learning rate injected so it can be logged.

    Defaults are SPEC.md's (betas 0.9 / 0.999, wd 0.01, clip 0.2, constant lr).

    Args:
      weight_decay_mask: ``"all"`` decays every parameter: verl's behaviour (its FSDP workers build
        ``AdamW(module.parameters(), weight_decay=...)`` with one param group), so this is the default for
        comparable runs. ``"no_norm_bias"`` exempts 1-D leaves (norm scales, biases; see
        ``no_norm_bias_mask``). A callable params -> bool pytree is passed to optax as is.
      grad_clip_norm: None disables clipping.
    Returns:
      an ``optax.GradientTransformation``; ``current_lr(opt_state)`` reads the lr of the last update.
    """
    if weight_decay_mask == "all":
        mask = None
    elif weight_decay_mask == "no_norm_bias":
        mask = no_norm_bias_mask
    elif callable(weight_decay_mask):
        mask = weight_decay_mask
    else:
        raise ValueError(
            "make_optimizer: weight_decay_mask must be 'all', 'no_norm_bias' or a callable, "
            f"got {weight_decay_mask!r}"
        )
    if grad_clip_norm is not None and grad_clip_norm <= 0:
        raise ValueError(f"make_optimizer: grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
    sched = make_schedule(lr, schedule, warmup_steps, total_steps, min_lr_ratio)
    factory = optax.inject_hyperparams(
        _clip_adamw, static_args=("b1", "b2", "eps", "weight_decay", "grad_clip_norm", "mask")
    )
    return factory(
        learning_rate=sched,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        grad_clip_norm=grad_clip_norm,
        mask=mask,
    )


def current_lr(opt_state: Any) -> jax.Array:
    """The learning rate used by the most recent update (schedule(0) right after init).

    Works on the optax state of ``make_optimizer``, on trees that wrap it, and on flax.nnx states
    (``nnx.state(nnx.Optimizer(...))``), where the namedtuples became dicts: it looks for the unique leaf
    at a path ``... hyperparams / learning_rate``.
    """

    def name(k) -> str:
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        names = [name(k) for k in path]
        while names and names[-1] == "value":  # nnx Variable wrapper
            names.pop()
        if len(names) >= 2 and names[-2:] == ["hyperparams", "learning_rate"]:
            found.append(leaf)
    if len(found) != 1:
        raise ValueError(
            f"current_lr: expected one hyperparams/learning_rate leaf in opt_state, found {len(found)}"
        )
    return found[0]
