"""Discriminator: the score is the head output at the last valid token (SPEC.md), whatever the padding."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from gadjax.models.decoder import positions_from_mask
from gadjax.models.discriminator import discriminator_from_decoder, last_valid_index
from gadjax.models.hf_export import save_hf_checkpoint
from gadjax.models.hf_io import load_decoder, load_discriminator
from tests.models.hf_fixtures import make_hf_model


def test_last_valid_index_under_left_right_and_no_padding():
    mask = np.array(
        [
            [0, 0, 1, 1, 1],  # left padded -> 4
            [1, 1, 1, 0, 0],  # right padded -> 2
            [1, 1, 1, 1, 1],  # full -> 4
            [0, 1, 1, 1, 0],  # prompt left-padded + response right-padded -> 3
            [1, 0, 0, 0, 0],  # single token -> 0
        ]
    )
    assert last_valid_index(jnp.asarray(mask)).tolist() == [4, 2, 4, 3, 0]


def _batch(vocab: int, pad: int):
    rng = np.random.RandomState(0)
    ids = rng.randint(1, vocab, (4, 9))
    mask = np.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    mask[2, :2] = 0
    mask[2, 7:] = 0  # both (the prompt/response layout)
    ids = np.where(mask == 1, ids, pad)
    return ids, mask


def test_score_equals_hidden_at_last_valid_token_dot_head(tmp_path):
    make_hf_model("llama", str(tmp_path / "hf"))
    disc = load_discriminator(str(tmp_path / "hf"), head_init="normal", seed=3)
    ids, mask = _batch(disc.config.vocab_size, pad=0)
    pos = positions_from_mask(jnp.asarray(mask))
    scores = np.asarray(disc(jnp.asarray(ids), pos, jnp.asarray(mask)))
    hidden, _ = disc.backbone(jnp.asarray(ids), pos, jnp.asarray(mask))
    hidden = np.asarray(hidden)
    head = np.asarray(disc.head[...])
    last = [5, 8, 6, 8]  # by hand from the masks above
    expected = np.array([hidden[i, last[i]] @ head for i in range(4)])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    # Changing a padded token changes nothing; changing the last valid one does.
    ids2 = ids.copy()
    ids2[0, 7] = 5
    assert np.allclose(np.asarray(disc(jnp.asarray(ids2), pos, jnp.asarray(mask))), scores)
    ids2[0, 5] = (ids[0, 5] + 1) % disc.config.vocab_size
    assert not np.allclose(np.asarray(disc(jnp.asarray(ids2), pos, jnp.asarray(mask)))[0], scores[0])


def test_initialised_from_student_and_exported_as_sequence_classifier(tmp_path):
    make_hf_model("qwen2", str(tmp_path / "hf"))
    student = load_decoder(str(tmp_path / "hf"))
    disc = discriminator_from_decoder(student, head_init="normal", seed=1)
    np.testing.assert_array_equal(np.asarray(disc.backbone.blocks.q[...]), np.asarray(student.blocks.q[...]))
    zero = discriminator_from_decoder(student, head_init="zero")
    assert not np.asarray(zero.head[...]).any()

    pad = 0
    save_hf_checkpoint(disc, str(tmp_path / "disc"))
    ref = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "disc"), pad_token_id=pad).eval()
    # HF picks the last non-pad token of RIGHT-padded rows: compare on those.
    ids, mask = _batch(disc.config.vocab_size, pad)
    right = [0, 3]
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids[right]), attention_mask=torch.tensor(mask[right])).logits[
            :, 0
        ]
    ours = disc(
        jnp.asarray(ids[right]), positions_from_mask(jnp.asarray(mask[right])), jnp.asarray(mask[right])
    )
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4, atol=1e-5)
    # The exported discriminator reloads with its trained head.
    again = load_discriminator(str(tmp_path / "disc"))
    np.testing.assert_allclose(np.asarray(again.head[...]), np.asarray(disc.head[...]))
