"""Optimizer: clipping + AdamW vs a numpy reference and torch.optim.AdamW; schedules vs HF formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gadjax.algo import current_lr, make_optimizer, make_schedule


def _params_grads(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params = {
        "kernel": rng.normal(size=(4, 3)).astype(np.float32),
        "norm_scale": (1.0 + 0.1 * rng.normal(size=(3,))).astype(np.float32),
    }
    grads = {k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
    return params, grads


def np_adamw_clip_step(params, grads, state, lr, b1, b2, eps, wd, clip, decay):
    """One torch-semantics AdamW step after global-norm clipping, float64."""
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    if clip is not None and norm > clip:
        g = {k: v * (clip / norm) for k, v in g.items()}
    step = state["step"] + 1
    out, m_new, v_new = {}, {}, {}
    for k, p in params.items():
        p = np.asarray(p, np.float64)
        m = b1 * state["m"][k] + (1 - b1) * g[k]
        v = b2 * state["v"][k] + (1 - b2) * g[k] ** 2
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        upd = m_hat / (np.sqrt(v_hat) + eps)
        if decay[k]:
            upd = upd + wd * p
        out[k], m_new[k], v_new[k] = p - lr * upd, m, v
    return out, {"step": step, "m": m_new, "v": v_new}, norm


@pytest.mark.parametrize("mask_mode", ["all", "no_norm_bias"])
@pytest.mark.parametrize("grad_scale", [0.01, 10.0])  # below / above the 0.2 clip
def test_steps_match_numpy_adamw_with_clipping(mask_mode, grad_scale):
    lr, wd, clip = 1e-2, 0.01, 0.2
    params, _ = _params_grads()
    tx = make_optimizer(lr, weight_decay=wd, grad_clip_norm=clip, weight_decay_mask=mask_mode)
    p_jax = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(p_jax)
    decay = {"kernel": True, "norm_scale": mask_mode == "all"}
    ref_p = params
    ref_state = {"step": 0, "m": {k: 0.0 for k in params}, "v": {k: 0.0 for k in params}}
    for step in range(3):
        _, grads = _params_grads(seed=step + 1, scale=grad_scale)
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, grads), opt_state, p_jax)
        p_jax = optax.apply_updates(p_jax, updates)
        ref_p, ref_state, _ = np_adamw_clip_step(
            ref_p, grads, ref_state, lr, 0.9, 0.999, 1e-8, wd, clip, decay
        )
        for k in params:
            np.testing.assert_allclose(
                np.asarray(p_jax[k]), ref_p[k], rtol=1e-5, atol=1e-7, err_msg=f"{k}@{step}"
            )


def test_matches_torch_adamw_and_clip_grad_norm():
    torch = pytest.importorskip("torch")
    lr, wd, clip = 5e-3, 0.01, 0.2
    params, _ = _params_grads(7)
    tparams = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in params.items()}
    topt = torch.optim.AdamW(list(tparams.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    tx = make_optimizer(lr, weight_decay=wd, grad_clip_norm=clip)
    p_jax = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(p_jax)
    for step in range(4):
        _, grads = _params_grads(seed=20 + step, scale=3.0)
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm=clip)
        topt.step()
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, grads), opt_state, p_jax)
        p_jax = optax.apply_updates(p_jax, updates)
        for k in params:
            # torch clips with max_norm / (norm + 1e-6); the difference is ~1e-6 relative
            np.testing.assert_allclose(
                np.asarray(p_jax[k]), tparams[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{k}@{step}"
            )


def hf_lambda(step, schedule, warmup, total, min_ratio=0.0):
    """transformers' get_constant_schedule_with_warmup / get_cosine_schedule_with_warmup, in python."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    "schedule,warmup,total,min_ratio",
    [
        ("constant", 0, None, 0.0),
        ("constant", 3, None, 0.0),
        ("warmup_cosine", 3, 10, 0.0),
        ("warmup_cosine", 2, 8, 0.1),
    ],
)
def test_schedules_match_hf_formulas(schedule, warmup, total, min_ratio):
    sched = make_schedule(2e-5, schedule, warmup, total, min_ratio)
    for step in range(12):
        ref = 2e-5 * hf_lambda(step, schedule, warmup, total, min_ratio)
        np.testing.assert_allclose(float(sched(step)), ref, rtol=1e-5, atol=1e-12)


def test_current_lr_reports_the_lr_of_the_last_update():
    tx = make_optimizer(1.0, "warmup_cosine", warmup_steps=2, total_steps=6)
    p = {"w": jnp.ones((2, 2))}
    state = tx.init(p)
    assert float(current_lr(state)) == 0.0
    seen = []
    for _ in range(4):
        _, state = tx.update(p, state, p)
        seen.append(float(current_lr(state)))
    np.testing.assert_allclose(seen, [hf_lambda(s, "warmup_cosine", 2, 6) for s in range(4)], rtol=1e-6)
    assert float(current_lr((state,))) == seen[-1]  # found inside a wrapping tree too


def test_current_lr_on_nnx_optimizer_state():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_optimizer(1.0, "warmup_cosine", 2, 6), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    for _ in range(3):
        opt.update(model, grads)
    ref = hf_lambda(2, "warmup_cosine", 2, 6)
    np.testing.assert_allclose(float(current_lr(nnx.state(opt))), ref, rtol=1e-6)
    np.testing.assert_allclose(float(current_lr(opt.opt_state)), ref, rtol=1e-6)


def test_no_norm_bias_mask_on_nnx_state():
    """The 1-D leaves of a real flax.nnx model (norm scale, bias) are exempt, kernels decayed."""
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.RMSNorm(4, rngs=rngs)

    params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
    tx = make_optimizer(0.1, weight_decay=0.5, grad_clip_norm=None, weight_decay_mask="no_norm_bias")
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)  # zero grads: only weight decay moves params
    upd = {"/".join(map(str, k)): v for k, v in jax.tree_util.tree_flatten_with_path(updates)[0]}
    moved = {k: bool(np.any(np.asarray(v) != 0)) for k, v in upd.items()}
    assert any("kernel" in k and m for k, m in moved.items())
    assert not any(("bias" in k or "scale" in k) and m for k, m in moved.items()), moved


def test_bad_config_raises():
    with pytest.raises(ValueError, match="total_steps"):
        make_optimizer(1e-3, "warmup_cosine", warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="schedule"):
        make_optimizer(1e-3, "linear")
    with pytest.raises(ValueError, match="weight_decay_mask"):
        make_optimizer(1e-3, weight_decay_mask="some")


def test_clip_matches_optax_clip_and_keeps_its_state_layout():
    """gadjax's scalar-factor clip gives optax.clip_by_global_norm's update (to rounding) and the same
    optimizer-state tree, so checkpoints written before it restore."""
    from gadjax.algo.optim import clip_by_global_norm

    params, grads = _params_grads(3, scale=10.0)  # norm >> 0.2: clipping active
    ours = optax.chain(clip_by_global_norm(0.2), optax.adamw(1e-3, weight_decay=0.01))
    ref = optax.chain(optax.clip_by_global_norm(0.2), optax.adamw(1e-3, weight_decay=0.01))
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
    for _ in range(3):
        u_ours, s_ours = ours.update(grads, s_ours, params)
        u_ref, s_ref = ref.update(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves((u_ours, s_ours)), jax.tree.leaves((u_ref, s_ref)), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
