"""Regenerate the tiny tokenizer and toy corpus used by configs/tiny.py (committed; run only to change them).

The toy task gives teacher responses a visible style (they all start "Indeed!" and end with a fixed
sign-off), so a discriminator can learn to tell them apart from a random student's samples.
"""

import json
import os
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOPICS = [
    "cats",
    "rivers",
    "jazz",
    "bread",
    "stars",
    "chess",
    "rain",
    "maps",
    "tea",
    "bridges",
    "owls",
    "clocks",
]
ASKS = ["Tell me about", "Describe", "Write a line on", "Explain", "Give a fact about", "Say something about"]


def corpus(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        ask = rng.choice(ASKS)
        words = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(2, 6)))
        rows.append(
            {
                "messages": [{"role": "user", "content": f"{ask} {topic}."}],
                "response": f"Indeed! {topic} and {words}. Kind regards.",
            }
        )
    return rows


def main() -> None:
    train, test = corpus(96, 0), corpus(16, 1)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [r["messages"][0]["content"] + " " + r["response"] for r in train] + ["user assistant system"] * 4
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML
    fast.save_pretrained(os.path.join(HERE, "tokenizer"))


if __name__ == "__main__":
    main()
