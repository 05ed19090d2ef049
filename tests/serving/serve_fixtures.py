"""Shared by the gadjax.serve tests: paths, the API key and plain HTTP helpers (the tiny checkpoint is the
`model_dir` fixture in conftest.py)."""

from __future__ import annotations

import json
import os

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(REPO, "configs", "tiny_assets", "tokenizer")
KEY = "test-secret-key-5f3a9c"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def post(url: str, body, key: str | None = KEY, raw: bytes | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(url + "/chat/completions", data=data, headers=headers, timeout=60)
