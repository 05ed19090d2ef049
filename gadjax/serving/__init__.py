"""Serving a gadjax checkpoint over an OpenAI-compatible HTTP API (CLI: ``python -m gadjax.serve``).

continuous.py runs requests in decode slots they join and leave (slots.py: the device programs); engine.py
batches requests through the rollout sampler (``--batching static``); protocol.py is the wire
format (validation, errors, response bodies); http.py is the stdlib HTTP front.
"""

from gadjax.serving.continuous import ContinuousEngine
from gadjax.serving.engine import Engine, Generation, GenParams
from gadjax.serving.http import ChatService, make_server
from gadjax.serving.protocol import ApiError, ChatRequest, parse_chat_request, with_hidden_system_prompt

__all__ = [
    "ApiError",
    "ChatRequest",
    "ChatService",
    "ContinuousEngine",
    "Engine",
    "GenParams",
    "Generation",
    "make_server",
    "parse_chat_request",
    "with_hidden_system_prompt",
]
