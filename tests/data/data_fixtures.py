"""Helpers for the data tests: a small real tokenizer (tokenizers WordLevel + ChatML template), row files.

The tokenizer is built with the `tokenizers` library and wrapped in transformers'
PreTrainedTokenizerFast, so chat templating and encoding are the libraries' own code, not ours.
"""

import json
import queue
import threading

from gadjax.teacher.client import TeacherResponse

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


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def gad_rows(n, prompt_words=3, response_words=2):
    """n rows in the released GAD format; row i mentions w{i % 64} so rows are distinguishable."""
    rows = []
    for i in range(n):
        prompt = " ".join([f"w{i % 64}"] + ["hello"] * (prompt_words - 1))
        response = " ".join(["paris"] * (response_words - 1) + [f"w{i % 64}"])
        rows.append({"content": [{"role": "user", "content": prompt}], "teacher_response": response})
    return rows


# A tiny stand-in for gadjax.teacher.TeacherClient with the same ``prefetch`` interface: it answers
# in a background thread (the real client works ahead too) and records every request.


def echo_answer(messages) -> str:
    """The teacher 'answers' with 'paris' and the first word of the last user turn."""
    return "paris " + messages[-1]["content"].split()[0]


class FakeTeacher:
    def __init__(self, answer=echo_answer):
        self.answer = answer
        self.requests: list[str] = []

    def prefetch(self, items, max_ahead):
        q: queue.Queue = queue.Queue(maxsize=max_ahead)
        end = object()

        def work():
            for pid, messages in items:
                self.requests.append(pid)
                text = self.answer(messages)
                q.put((pid, messages, [TeacherResponse(text, "stop", {"completion_tokens": 2}, False)]))
            q.put(end)

        threading.Thread(target=work, daemon=True).start()
        while (item := q.get()) is not end:
            yield item
