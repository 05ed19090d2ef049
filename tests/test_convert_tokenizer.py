"""gadjax.convert on model directories without tokenizer files (issue 18): the weights convert, a warning
says no tokenizer was written, and --tokenizer takes one from elsewhere."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from safetensors.numpy import load_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from gadjax.convert import TOKENIZER_FILES, has_tokenizer, main  # noqa: E402
from tests.models.hf_fixtures import make_hf_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "configs", "tiny_assets", "tokenizer")


def _tensors(directory) -> dict[str, np.ndarray]:
    return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_directory_without_tokenizer_converts_with_a_warning(tmp_path, caplog, family):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_hf_model(family, str(src), vocab_size=384)  # config.json, generation_config.json, safetensors
    assert not has_tokenizer(str(src))
    with caplog.at_level(logging.WARNING, logger="gadjax.convert"):
        assert main([str(src), str(dst)]) == 0
    assert any("no tokenizer found" in r.getMessage() for r in caplog.records), caplog.text
    # No tokenizer written: not even the empty one transformers would build for Qwen from config.json.
    assert not any(os.path.exists(dst / f) for f in (*TOKENIZER_FILES, "special_tokens_map.json"))
    theirs, ours = _tensors(src), _tensors(dst)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_tokenizer_flag_copies_a_given_tokenizer(tmp_path, caplog):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_hf_model("llama", str(src), vocab_size=384)
    with caplog.at_level(logging.WARNING, logger="gadjax.convert"):
        assert main([str(src), str(dst), "--tokenizer", TOKENIZER]) == 0
    assert not caplog.records, caplog.text
    theirs, ours = _tensors(src), _tensors(dst)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    want, got = AutoTokenizer.from_pretrained(TOKENIZER), AutoTokenizer.from_pretrained(str(dst))
    text = "Explain rain. Indeed! rain and stars tea."
    assert got.encode(text) == want.encode(text) and got.eos_token == want.eos_token
    assert got.chat_template == want.chat_template


def test_a_tokenizer_flag_without_tokenizer_files_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    make_hf_model("llama", str(src))
    capsys.readouterr()  # transformers' progress bar
    assert main([str(src), str(tmp_path / "dst"), "--tokenizer", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--tokenizer {src}: no tokenizer files" in err
    assert not os.path.exists(tmp_path / "dst")


def test_dtype_flag_sets_the_weights_dtype_on_disk(tmp_path, capsys):
    """--dtype bfloat16 writes BF16 tensors equal to the source's rounded by numpy's own cast (ml_dtypes),
    and config.json names the dtype; an unknown one is a usage error."""
    import json

    import ml_dtypes

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_hf_model("qwen2", str(src), vocab_size=384)
    assert main([str(src), str(dst), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("bfloat16, no tokenizer")
    with open(dst / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    theirs, ours = _tensors(src), _tensors(dst)
    for name, value in theirs.items():
        assert ours[name].dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(ours[name], value.astype(ml_dtypes.bfloat16), err_msg=name)
    with pytest.raises(SystemExit) as e:
        main([str(src), str(tmp_path / "bad"), "--dtype", "int8"])
    assert e.value.code == 2 and "--dtype: invalid choice: 'int8'" in capsys.readouterr().err
