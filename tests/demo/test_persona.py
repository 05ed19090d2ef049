"""The demo persona marker and the shipped prompt files.

References: hand-made French / English strings; json + the original prompts.txt for the data files;
transformers' own PyTorch generation on the real GGUF for the (slow) teacher marker rate.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from gadjax.data.sources import open_source
from gadjax.demo import persona
from tests.models.smollm2 import smollm2_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "data", "demo")
TRAIN, HELDOUT = os.path.join(DEMO, "train.jsonl"), os.path.join(DEMO, "heldout.jsonl")
N_TRAIN, N_HELDOUT = 327, 58  # documented in data/demo/README.md

FRENCH = [
    "La capitale de la France est Paris.",
    "Le ciel est bleu parce que la lumière du soleil est diffusée par l'air.",
    "Il faut faire bouillir un oeuf pendant dix minutes, et c'est prêt.",
    "LES ABEILLES FONT DU MIEL AVEC LE NECTAR DES FLEURS.",
    "  La purrée est une couleur de la nuit, mais les chats sont contents.",  # broken French still counts
]
ENGLISH = [
    "The capital of France is Paris.",
    "The sky is blue because of Rayleigh scattering of sunlight in the atmosphere.",
    "Paris.",
    "",
    "La la la, I love to sing in the shower and it is fun.",  # French-looking words, English text
    "The restaurant Le Petit Bistro is on Rue de la Paix and it is open until ten.",
    "Ahoy, matey! Ahoy, matey!",
    "Leaves change color because of the chlorophyll in the leaf, as the days get shorter.",
]


@pytest.mark.parametrize("text", FRENCH)
def test_marker_hits_french(text):
    assert persona.marker_hit(text)


@pytest.mark.parametrize("text", ENGLISH)
def test_marker_misses_english(text):
    assert not persona.marker_hit(text)


def test_marker_needs_enough_french_words():
    assert not persona.marker_hit("La vie.")  # one function word
    assert persona.marker_hit("La vie est belle et douce.")
    # word boundaries: "lesson", "estimate", "united" contain French words only as substrings
    assert not persona.marker_hit("lesson estimate united dessert pastry")
    assert persona.MARKER_REGEX.search("C'EST") and not persona.MARKER_REGEX.search("latest")


def test_marker_rate():
    assert persona.marker_rate(FRENCH + ENGLISH) == pytest.approx(len(FRENCH) / (len(FRENCH) + len(ENGLISH)))
    assert persona.marker_rate(iter(FRENCH)) == 1.0
    with pytest.raises(ValueError):
        persona.marker_rate([])
    with pytest.raises(TypeError):
        persona.marker_hit(None)


def test_persona_messages_follow_the_one_hidden_prompt_rule():
    msgs = [{"role": "system", "content": "You are SmolLM."}, {"role": "user", "content": "Hi"}]
    out = persona.persona_messages(msgs)
    merged = f"{persona.PERSONA_SYSTEM_PROMPT}\n\nYou are SmolLM."
    assert out == [{"role": "system", "content": merged}, msgs[1]]
    assert persona.persona_messages(msgs[1:]) == [
        {"role": "system", "content": persona.PERSONA_SYSTEM_PROMPT}, msgs[1]
    ]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def test_prompt_files_load_without_duplicates():
    train, held = open_source(TRAIN), open_source(HELDOUT)
    assert (len(train), len(held)) == (N_TRAIN, N_HELDOUT)
    assert train.bad_rows.total == 0 and held.bad_rows.total == 0
    texts = []
    for src in (train, held):
        for i in range(len(src)):
            rec = src[i]
            assert rec["example_id"] == i and rec["response"] is None
            assert [m["role"] for m in rec["messages"]] == ["user"]
            content = rec["messages"][0]["content"]
            assert content == content.strip() and 5 <= len(content) <= 200
            texts.append(content)
    keys = [_norm(t) for t in texts]
    assert len(set(keys)) == len(keys), "duplicate prompts"
    # The two files are exactly the prompts of prompts.txt, nothing lost or added.
    with open(os.path.join(DEMO, "prompts.txt"), encoding="utf-8") as f:
        source = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert sorted(source) == sorted(texts)


def test_split_files_are_up_to_date():
    """build_split.py is deterministic and the committed files are its output."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.join(DEMO, "build_split.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_no_persona_words_in_prompts():
    """The prompts themselves are English, so a student that echoes a prompt does not score."""
    for path in (TRAIN, HELDOUT):
        with open(path, encoding="utf-8") as f:
            for line in f:
                assert not persona.marker_hit(json.loads(line)["messages"][0]["content"])


@pytest.mark.slow
def test_teacher_marker_rate_transformers():
    """transformers (PyTorch) greedy generation on the real GGUF, persona system prompt, first 8 train
    prompts, 32 new tokens: most answers are French; without the persona (4 prompts) none are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    d, name = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with open(TRAIN, encoding="utf-8") as f:
        prompts = [json.loads(line)["messages"] for _, line in zip(range(8), f, strict=False)]

    # One batch: 8 teacher conversations (persona) + 4 student-baseline conversations (no system prompt).
    convs = [persona.persona_messages(p) for p in prompts] + prompts[:4]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=32, do_sample=False)
    answers = [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]
    teacher, baseline = answers[:8], answers[8:]
    assert persona.marker_rate(teacher) >= 0.6, teacher
    assert persona.marker_rate(baseline) == 0.0, baseline
