"""The tiny Qwen2 checkpoint (random weights, the repo's tokenizer) that the gadjax.serve tests serve."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.models.hf_fixtures import make_hf_model
from tests.serving.serve_fixtures import TOKENIZER


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("serve_model"))
    make_hf_model("qwen2", d, vocab_size=384)  # tokenizer vocab 379 fits
    for f in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, f), d)
    return d
