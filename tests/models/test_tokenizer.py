"""Tokenizers rebuilt from GGUF metadata against transformers' own GGUF tokenizer conversion."""

from __future__ import annotations

import json
import os

import gguf
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from gadjax.models.tokenizer import load_tokenizer, save_tokenizer
from tests.models.smollm2 import smollm2_gguf

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Héllo wörld, naïve café, crème brûlée, ñandú, Ångström, Œuvre",
    "東京は日本の首都です。你好，世界！안녕하세요 Привет мир",
    "emoji 😀👍🏽 🇫🇷 👨‍👩‍👧 done",
    "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2, 3]}\n    else:\n        pass  # comment\n",
    "for (int i = 0; i < n; ++i) {\n    sum += a[i] * 0x1F;\n}\r\n",
    "   leading   and  trailing   \n\n\n  \t \t",
    "I have 123 apples, 4567 pears and 3.14159 pies in 2024.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>x<|im_end|><|im_end|>",
    "don't won't I'm we'll they've she'd It's",
    "",
]
CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Héllo 東京 😀"},
        {"role": "assistant", "content": "def f():\n\treturn 1"},
        {"role": "user", "content": "again"},
    ],
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _assert_same_tokenization(ours, ref, texts=TEXTS):
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ids) == text, text
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text


def _assert_same_chat(ours, ref):
    for messages in CHAT:
        for generation_prompt in (True, False):
            kwargs = dict(add_generation_prompt=generation_prompt, tokenize=False)
            assert ours.apply_chat_template(messages, **kwargs) == ref.apply_chat_template(messages, **kwargs)


def _train_byte_level_bpe() -> Tokenizer:
    """A small byte-level BPE (trained here by the `tokenizers` library) with ChatML control tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t for t in TEXTS if t] * 20 + ["the cat sat on the mat with 12 hats " * 5, "return x; " * 9]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken("<think>", normalized=False, special=False)])
    return tok


def _write_tokenizer_gguf(path: str, tok: Tokenizer, pre: str, add_bos: bool = False) -> None:
    model = json.loads(tok.to_str())["model"]
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [
        gguf.TokenType.CONTROL if t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
        else gguf.TokenType.USER_DEFINED if t == "<think>" else gguf.TokenType.NORMAL
        for t in tokens
    ]
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_context_length(512)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _reference(path: str):
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return _train_byte_level_bpe()


@pytest.mark.parametrize("pre", ["gpt2", "qwen2", "llama-bpe"])
def test_synthetic_gguf_tokenizer_matches_transformers(pre, trained, tmp_path):
    path = str(tmp_path / f"tok-{pre}.gguf")
    _write_tokenizer_gguf(path, trained, pre)
    ours, ref = load_tokenizer(path), _reference(path)
    _assert_same_tokenization(ours, ref, TEXTS + ["<think>x</think> 9999999 hats"])
    _assert_same_chat(ours, ref)
    assert ours.get_vocab() == ref.get_vocab()
    # control tokens are special (dropped by skip_special_tokens), the user-defined one is kept whole
    think = trained.token_to_id("<think>")
    assert ours.encode("a<think>b", add_special_tokens=False)[1] == think
    assert ours.decode([think], skip_special_tokens=True) == "<think>"
    # eos from metadata; no pad id in the file, so pad falls back to eos
    assert ours.eos_token == "<|im_end|>" and ours.pad_token_id == ours.eos_token_id
    assert ours.bos_token == ref.bos_token == "<|endoftext|>"
    if pre == "gpt2":  # the file's vocabulary and merges under GPT-2 pre-tokenization is `trained` itself
        for text in TEXTS:
            assert ours.encode(text, add_special_tokens=False) == trained.encode(text).ids, text


def test_add_bos_token_flag_is_honoured_and_survives_save(trained, tmp_path):
    path = str(tmp_path / "bos.gguf")
    _write_tokenizer_gguf(path, trained, "qwen2", add_bos=True)
    ours, ref = load_tokenizer(path), _reference(path)
    bos = trained.token_to_id("<|endoftext|>")
    assert ours.encode("hi there")[0] == bos
    assert ours.encode("hi there") == ref.encode("hi there")
    assert ours.encode("hi there", add_special_tokens=False)[0] != bos
    save_tokenizer(ours, tmp_path / "export")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert reloaded.encode("hi there") == ours.encode("hi there")


def test_unsupported_tokenizer_and_pre_tokenizer_are_errors(trained, tmp_path):
    path = str(tmp_path / "odd-pre.gguf")
    _write_tokenizer_gguf(path, trained, "some-future-pre")
    with pytest.raises(ValueError, match=r"odd-pre\.gguf.*pre-tokenizer 'some-future-pre'"):
        load_tokenizer(path)
    spm = str(tmp_path / "spm.gguf")
    writer = gguf.GGUFWriter(spm, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"spm\.gguf.*tokenizer model 'llama'"):
        load_tokenizer(spm)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.gguf")


def test_hf_directory_round_trip_and_missing_chat_template(trained, tmp_path):
    path = str(tmp_path / "t.gguf")
    _write_tokenizer_gguf(path, trained, "gpt2")
    ours = load_tokenizer(path)
    written = save_tokenizer(ours, tmp_path / "hf")
    assert sorted(os.path.basename(p) for p in written) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"
    ]
    with open(tmp_path / "hf" / "tokenizer_config.json") as f:
        assert json.load(f)["chat_template"] == CHAT_TEMPLATE
    with open(tmp_path / "hf" / "special_tokens_map.json") as f:
        assert json.load(f)["eos_token"] == "<|im_end|>"
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    _assert_same_tokenization(reloaded, ours)
    _assert_same_chat(reloaded, ours)
    again = load_tokenizer(tmp_path / "hf")
    assert (again.eos_token_id, again.pad_token_id) == (ours.eos_token_id, ours.pad_token_id)

    # a HF directory whose tokenizer has no chat template (and no pad token)
    bare = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    bare.chat_template = None
    bare.pad_token = None
    bare.save_pretrained(str(tmp_path / "bare"))
    with open(tmp_path / "bare" / "tokenizer_config.json") as f:
        assert json.load(f).get("chat_template") is None
    with pytest.raises(ValueError, match=r"bare.*no chat template"):
        load_tokenizer(tmp_path / "bare")
    tok = load_tokenizer(tmp_path / "bare", require_chat_template=False)
    assert tok.pad_token_id == tok.eos_token_id


# ---- the real SmolLM2-135M-Instruct file (slow: each tokenizer takes several seconds to build) ----


@pytest.fixture(scope="module")
def smollm2_pair():
    path = smollm2_gguf()
    return load_tokenizer(path), _reference(path)


@pytest.mark.slow
def test_smollm2_ids_match_transformers_gguf_conversion(smollm2_pair):
    ours, ref = smollm2_pair
    _assert_same_tokenization(ours, ref)
    assert ours.get_vocab() == ref.get_vocab() and len(ours) == 49152
    assert ours.encode("<|im_start|><|im_end|>", add_special_tokens=False) == [1, 2]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 2, 2, 0)
    assert ours.all_special_ids and set(ours.all_special_ids) <= set(range(17))


@pytest.mark.slow
def test_smollm2_chat_template_matches_transformers(smollm2_pair):
    ours, ref = smollm2_pair
    _assert_same_chat(ours, ref)
    rendered = ours.apply_chat_template(CHAT[0], add_generation_prompt=True, tokenize=False)
    question = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert rendered.endswith(question + "<|im_start|>assistant\n")
    assert rendered.startswith("<|im_start|>system\n")


@pytest.mark.slow
def test_smollm2_saved_tokenizer_loads_in_transformers(smollm2_pair, tmp_path):
    ours, ref = smollm2_pair
    save_tokenizer(ours, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    _assert_same_tokenization(reloaded, ref)
    _assert_same_chat(reloaded, ref)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (2, 2)
