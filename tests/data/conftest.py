"""Fixtures for the data tests: a small real tokenizer (tokenizers WordLevel + ChatML template), row files.

The tokenizer is built with the `tokenizers` library and wrapped in transformers'
PreTrainedTokenizerFast, so chat templating and encoding are the libraries' own code, not ours.
"""

import json

import pytest

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ("system user assistant you are a helpful bot what is the capital of france paris answer question "
         "tell me about cats dogs and birds one two three four five six seven eight nine ten hello world "
         "long prompt response word").split()


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(WORDS)))}
    for i in range(64):
        vocab.setdefault(f"w{i}", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def gad_rows(n, prompt_words=3, response_words=2):
    """n rows in the released GAD format; row i mentions w{i % 64} so rows are distinguishable."""
    return [{"content": [{"role": "user", "content": " ".join([f"w{i % 64}"] + ["hello"] * (prompt_words - 1))}],
             "teacher_response": " ".join(["paris"] * (response_words - 1) + [f"w{i % 64}"])}
            for i in range(n)]
