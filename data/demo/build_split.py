"""Build data/demo/train.jsonl and data/demo/heldout.jsonl from data/demo/prompts.txt (deterministic).

Every non-empty line of prompts.txt that does not start with '#' is one single-turn user prompt. The
split is a pure function of the prompt texts: the HELDOUT_FRACTION of prompts with the smallest
sha256(normalized text) go to heldout.jsonl, the rest to train.jsonl, each file in prompts.txt order.
Adding a prompt therefore never moves an existing prompt except across the size boundary.
Duplicates (after lower-casing and dropping punctuation / repeated spaces) are an error.

    .venv/bin/python data/demo/build_split.py          # writes the two files
    .venv/bin/python data/demo/build_split.py --check  # exit 1 if the files are not up to date
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HELDOUT_FRACTION = 0.15


def normalize(text: str) -> str:
    """The key used for duplicate detection and for the split hash."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def read_prompts(path: str) -> list[str]:
    prompts: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key = normalize(text)
            if key in seen:
                raise SystemExit(f"{path}:{lineno}: duplicate of line {seen[key]}: {text!r}")
            seen[key] = lineno
            prompts.append(text)
    return prompts


def split(prompts: list[str]) -> tuple[list[str], list[str]]:
    """(train, heldout), each in input order."""
    n_held = round(HELDOUT_FRACTION * len(prompts))
    ranked = sorted(prompts, key=lambda p: hashlib.sha256(normalize(p).encode()).hexdigest())
    held = set(ranked[:n_held])
    return [p for p in prompts if p not in held], [p for p in prompts if p in held]


def render(prompts: list[str]) -> str:
    rows = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify the jsonl files are up to date")
    args = ap.parse_args()
    train, held = split(read_prompts(os.path.join(HERE, "prompts.txt")))
    outputs = {"train.jsonl": render(train), "heldout.jsonl": render(held)}
    stale = []
    for name, text in outputs.items():
        path = os.path.join(HERE, name)
        if args.check:
            current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
            if current != text:
                stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run data/demo/build_split.py", file=sys.stderr)
        return 1
    print(f"train {len(train)}  heldout {len(held)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
