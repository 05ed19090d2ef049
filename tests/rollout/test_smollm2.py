"""Slow: the sampler on the real SmolLM2-135M-Instruct (GGUF) matches transformers' greedy generate."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import torch

from gadjax.models.hf_io import load_decoder
from gadjax.models.tokenizer import load_tokenizer
from gadjax.rollout import Sampler, SamplingConfig
from tests.models.smollm2 import smollm2_gguf

NEW = 40


@pytest.mark.slow
def test_smollm2_greedy_chat_answer_matches_transformers():
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf()
    tok = load_tokenizer(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = np.asarray([tok.encode(text, add_special_tokens=False)], np.int32)
    mask = np.ones_like(prompt)
    eos = tok.eos_token_id

    # Greedy for NEW tokens WITHOUT stopping on both sides, so >= 32 tokens are compared even though
    # the answer itself is short; the EOS position is then checked separately.
    ref = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    with torch.no_grad():
        want = ref.generate(
            input_ids=torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
        )[0, prompt.shape[1] :].numpy()

    model = load_decoder(path)
    cfg = SamplingConfig(max_new_tokens=NEW, temperature=0.0, prompt_buckets=(64,))
    out = Sampler(model, cfg).generate(prompt, mask, jax.random.key(0))
    np.testing.assert_array_equal(out.response_ids[0], want)

    stop = int(np.flatnonzero(want == eos)[0])
    answer = tok.decode(out.response_ids[0, :stop])
    assert "Paris" in answer, answer
