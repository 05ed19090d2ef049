"""LoRA export: a PEFT adapter directory that peft loads onto the Hugging Face base model, a merged HF
checkpoint that transformers loads, and `gadjax.convert --adapter` merging the directory into its base:
all give gadjax's (unmerged) logits."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from gadjax.convert import main as convert_main  # noqa: E402
from gadjax.models import lora  # noqa: E402
from gadjax.models.hf_export import save_hf_checkpoint  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402
from gadjax.models.peft_io import read_peft_adapter, save_peft_adapter  # noqa: E402
from tests.models.hf_fixtures import left_padded_batch, make_hf_model, torch_logits  # noqa: E402

LENGTHS = [9, 4, 7]


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_peft_and_merged_exports_reproduce_gadjax_logits(family, tmp_path):
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    merged_dir, converted_dir = str(tmp_path / "merged"), str(tmp_path / "converted")
    hf = make_hf_model(family, base_dir)
    ids, mask, pos = left_padded_batch(hf.config.vocab_size, LENGTHS)

    model = load_decoder(base_dir)
    plain_graphdef, _ = nnx.split(model, nnx.Param)
    cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=lora.resolve_targets(["*_proj"]))
    lora.attach(model.blocks, cfg, jax.random.key(0))
    for i, name in enumerate(cfg.targets):  # B = 0 would make every check trivial
        var = getattr(model.blocks, f"{name}_lora_b")
        var[...] = 0.1 * jax.random.normal(jax.random.key(i + 1), var.shape)
    hidden, _ = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    ours = np.asarray(model.logits(hidden))
    valid = mask.astype(bool)
    assert np.abs(ours - torch_logits(hf, ids, mask, pos))[valid].max() > 1e-2  # the adapter matters

    _, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    save_peft_adapter(adapters, cfg, model.config, adapter_dir)
    assert sorted(os.listdir(adapter_dir)) == ["adapter_config.json", "adapter_model.safetensors"]
    read_cfg, _ = read_peft_adapter(adapter_dir, model.config)
    assert read_cfg == cfg

    with_adapter = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert np.abs(torch_logits(with_adapter.eval(), ids, mask, pos) - ours)[valid].max() <= 1e-4

    save_hf_checkpoint(nnx.merge(plain_graphdef, lora.merge(adapters, base, cfg.scale)), merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert np.abs(torch_logits(merged, ids, mask, pos) - ours)[valid].max() <= 1e-4

    assert convert_main([base_dir, converted_dir, "--adapter", adapter_dir]) == 0
    a = load_file(os.path.join(merged_dir, "model.safetensors"))
    b = load_file(os.path.join(converted_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-6, err_msg=k)


def test_convert_rejects_an_adapter_for_another_model(tmp_path):
    make_hf_model("qwen2", str(tmp_path / "base"))
    os.makedirs(tmp_path / "bad")
    (tmp_path / "bad" / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    code = convert_main([str(tmp_path / "base"), str(tmp_path / "out"), "--adapter", str(tmp_path / "bad")])
    assert code == 2
