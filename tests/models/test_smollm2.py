"""The real embedded model (SmolLM2-135M-Instruct GGUF): gadjax logits vs transformers loading the same
file, and the conversion CLI end to end. Slow: transformers' GGUF load takes ~20 s here."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from gadjax.models.decoder import positions_from_mask
from gadjax.models.hf_io import load_decoder
from tests.models.smollm2 import smollm2_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    d, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    return path, model, tok


def test_logits_match_transformers_on_a_left_padded_chat_batch(reference):
    import torch

    path, ref_model, tok = reference
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about the sea."}],
    ]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    t = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = np.array([[pad] * (t - len(x)) + x for x in ids])
    mask = np.array([[0] * (t - len(x)) + [1] * len(x) for x in ids])
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        theirs = ref_model(
            input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
        ).logits.numpy()
    model = load_decoder(path)
    hidden, _ = model(jnp.asarray(batch), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    ours = np.asarray(model.logits(hidden))
    diff = np.abs(ours - theirs)[mask.astype(bool)].max()
    assert diff <= 1e-3, diff


def test_convert_cli_gguf_to_hf_directory_loads_in_transformers(reference, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gadjax.convert import main

    path, ref_model, ref_tok = reference
    out = tmp_path / "smollm2-hf"
    assert main([path, str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    text = ref_tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert tok.encode(text, add_special_tokens=False) == ref_tok.encode(text, add_special_tokens=False)
    ids = torch.tensor([ref_tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        np.testing.assert_allclose(model(ids).logits.numpy(), ref_model(ids).logits.numpy(), atol=1e-3)


def test_convert_cli_reports_a_bad_source(tmp_path, capsys):
    from gadjax.convert import main

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "unsupported model_type 'gpt2'" in capsys.readouterr().err
