"""LoRA through the trainer (configs/tiny.py, 8-device CPU mesh): a warmup -> gad hand-off that carries the
adapters, checkpoints that hold only adapters (and D's head), the KL reference = warmup adapters on the
shared base, bitwise exact resume, and the PEFT adapter export. Config keys are validated."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gadjax import config as config_lib
from gadjax.metrics import read_metrics
from gadjax.trainer import validation
from tests.test_train import _compared, run_cli, tiny_config

LORA = {"model.lora.rank": 4, "disc.lora.rank": 4, "model.lora.alpha": 8.0}
LORA_FLAGS = [f"--config.{k}={v}" for k, v in LORA.items()]


def _checkpoint_keys(run_dir: str, step: int, item: str) -> list[str]:
    with open(os.path.join(run_dir, "checkpoints", str(step), item, "_METADATA"), encoding="utf-8") as f:
        return sorted(json.load(f)["tree_metadata"])


@pytest.mark.slow
def test_lora_warmup_then_gad_resumes_bitwise(tmp_path):
    from gadjax.train import run

    warmup = tmp_path / "warmup" / "run"
    run(tiny_config(tmp_path / "warmup", stage="warmup", **{"train.steps": 2, **LORA}))
    g_keys = _checkpoint_keys(str(warmup), 2, "g_params")
    d_keys = _checkpoint_keys(str(warmup), 2, "d_params")
    assert g_keys and all("_lora_" in k for k in g_keys), g_keys  # no base weights in the checkpoint
    assert all("_lora_" in k or "head" in k for k in d_keys) and any("head" in k for k in d_keys)
    opt_params = [k for k in _checkpoint_keys(str(warmup), 2, "g_opt") if "blocks" in k or "embed" in k]
    assert opt_params and all("_lora_" in k for k in opt_params)  # Adam moments of adapters only

    common = [
        "--config.stage=gad",
        "--config.train.steps=4",
        "--config.checkpoint.every=2",
        f"--config.init_from={warmup}",
        *LORA_FLAGS,
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_cli(tmp_path, *common, f"--config.run_dir={straight}")
    proc = run_cli(
        tmp_path, *common, f"--config.run_dir={killed}", "--config.train.debug_kill_at_step=2", check=False
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_cli(tmp_path, *common, f"--config.run_dir={killed}", "--config.resume=true")

    a, b = read_metrics(str(straight)), read_metrics(str(killed))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert _compared(ra) == _compared(rb), ra["step"]
    # The reference is the warmup policy (base + warmup adapters): at the first gad step G equals it.
    assert a[0]["kl_loss"] == 0.0 and a[-1]["kl_loss"] > 0.0
    from safetensors.numpy import load_file

    for sub, name in (("student", "model.safetensors"), ("student_adapter", "adapter_model.safetensors")):
        pa = load_file(str(straight / "export" / sub / name))
        pb = load_file(str(killed / "export" / sub / name))
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    adapter = load_file(str(straight / "export" / "student_adapter" / "adapter_model.safetensors"))
    assert any(np.abs(v).max() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained, not B = 0

    # Changing the LoRA setting across a hand-off or a resume is refused, naming the key.
    from gadjax.trainer.loop import Trainer

    with pytest.raises(ValueError, match=r"config\.init_from: .* LoRA"):
        Trainer(tiny_config(tmp_path / "full", stage="gad", init_from=str(warmup)))
    with pytest.raises(ValueError, match=r"config\.resume: .* LoRA"):
        Trainer(tiny_config(tmp_path, stage="gad", run_dir=str(straight), resume=True))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("model.lora.rank", -1, r"config\.model\.lora\.rank"),
        ("disc.lora.dropout", 0.1, r"config\.disc\.lora\.dropout: LoRA dropout is not implemented"),
        ("model.lora.targets", ("lm_head",), r"config\.model\.lora\.targets: .*matches none"),
        ("model.lora.alpha", 0.0, r"config\.model\.lora\.alpha"),
        ("model.base_dtype", "bfloat16", r"config\.model\.base_dtype: applies to a frozen LoRA base"),
        ("model.base_dtype", "fp8", r"config\.model\.base_dtype: 'fp8'"),
    ],
)
def test_lora_keys_are_validated(tmp_path, key, value, match):
    c = tiny_config(tmp_path, **{key: value, "disc.lora.rank": 4 if key == "disc.lora.dropout" else 0})
    if key in ("model.lora.targets", "model.lora.alpha"):
        c.model.lora.rank = 4
    with pytest.raises(config_lib.ConfigValidationError, match=match):
        validation.validate(c)


def test_lora_base_is_frozen_in_base_dtype_and_adapters_stay_float32():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gadjax.models.decoder import Decoder
    from gadjax.models.lora import LoraConfig
    from gadjax.parallel.mesh import make_mesh
    from gadjax.trainer.adapters import split_trainable
    from tests.tiny_models import tiny_model_config

    mesh = make_mesh((1, -1, 1))
    model = Decoder(tiny_model_config(), rngs=nnx.Rngs(0))
    parts, params = split_trainable(
        model, LoraConfig(4, 8.0, ("q", "v")), jax.random.key(0), mesh, jnp.bfloat16
    )
    assert {x.dtype for x in jax.tree.leaves(parts.base)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert len(jax.tree.leaves(params)) == 4  # A and B of q and v
    merged = parts.full_params(params)  # the plain model's weights, B = 0: the bf16 base itself
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(parts.base), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_d_backbone_shares_g_frozen_base():
    import jax
    from flax import nnx

    from gadjax.models.decoder import Decoder
    from gadjax.models.discriminator import discriminator_from_decoder
    from gadjax.models.lora import LoraConfig
    from gadjax.parallel.mesh import make_mesh
    from gadjax.trainer.adapters import share_backbone, split_trainable
    from tests.tiny_models import tiny_model_config

    mesh = make_mesh((1, -1, 1))
    student = Decoder(tiny_model_config(), rngs=nnx.Rngs(0))
    disc = discriminator_from_decoder(student)
    cfg = LoraConfig(4, 8.0, ("q", "v"))
    g, _ = split_trainable(student, cfg, jax.random.key(0), mesh)
    d, d_params = split_trainable(disc, cfg, jax.random.key(1), mesh)
    assert ("head",) in dict(nnx.to_flat_state(d_params))  # D's head trains
    share_backbone(d, g)
    g_flat = dict(nnx.to_flat_state(g.base))
    d_flat = dict(nnx.to_flat_state(d.base))
    assert set(d_flat) == {("backbone", *p) for p in g_flat if p != ("lm_head",)}  # D has no LM head
    for path, leaf in d_flat.items():
        assert leaf[...] is g_flat[path[1:]][...], path  # the same buffer, not a copy
