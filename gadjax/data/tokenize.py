"""Per-row tokenization: chat-template the prompt, re-tokenize the teacher response, apply length limits.

Only the tokenizer surface of the shared contract is used: ``apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)``, ``encode(text, add_special_tokens=False)`` and
``eos_token_id``.

Length limits (``overlong_*`` = "truncate" | "drop"):
- Prompts longer than ``max_prompt_tokens`` keep their END. The end holds what the student must answer:
  the last user turn and the assistant header the template appends for ``add_generation_prompt``;
  without that header the model is not asked to speak at all. What is cut is the oldest context
  (system prompt / early turns), which is the cheapest loss.
- Responses longer than ``max_response_tokens`` (counted WITH the EOS) keep their START, and get no EOS:
  the text did not end there, so the SFT loss must not teach the student to stop mid-sentence, and the
  discriminator scores the last valid token (SPEC.md "Players") of what was kept.
- A response the TEACHER cut (finish_reason "length": its max_tokens ran out) gets no EOS either and
  counts as truncated. Otherwise every teacher response would end in EOS while the student's samples
  cut at max_new_tokens do not, and the discriminator could tell them apart by the EOS alone (a reward
  for stopping early, not for sounding like the teacher).
Every truncation or drop is flagged on the element and counted by the batcher (``DataStats``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

OVERLONG = ("truncate", "drop")


class RowEncoder:
    """Picklable callable (grain may ship it to worker processes) that tokenizes one record."""

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_tokens: int,
        max_response_tokens: int,
        overlong_prompt: str = "truncate",
        overlong_response: str = "truncate",
    ):
        for name, v in (("overlong_prompt", overlong_prompt), ("overlong_response", overlong_response)):
            if v not in OVERLONG:
                raise ValueError(f"{name} must be one of {OVERLONG}, got {v!r}")
        if max_prompt_tokens < 1 or max_response_tokens < 1:
            raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id: responses need an EOS appended")
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.overlong_prompt = overlong_prompt
        self.overlong_response = overlong_response

    def encode_prompt(self, element: dict[str, Any]) -> dict[str, Any]:
        """Adds prompt_ids (int32), prompt_len_raw, prompt_truncated, dropped ('prompt_too_long' | None)."""
        text = self.tokenizer.apply_chat_template(
            element["messages"], add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        out = dict(element, prompt_len_raw=len(ids), prompt_truncated=False, dropped=None)
        if len(ids) > self.max_prompt_tokens:
            if self.overlong_prompt == "drop":
                out["dropped"] = "prompt_too_long"
            else:
                ids = ids[-self.max_prompt_tokens :]  # keep the end: see module docstring
                out["prompt_truncated"] = True
        out["prompt_ids"] = np.asarray(ids, np.int32)
        return out

    def encode_response(self, element: dict[str, Any]) -> dict[str, Any]:
        """Adds response_ids (int32, EOS appended unless truncated), response_len_raw, response_truncated."""
        out = dict(element, response_truncated=False)
        if out.get("dropped"):
            out["response_ids"] = np.zeros((0,), np.int32)
            out["response_len_raw"] = 0
            return out
        ids = self.tokenizer.encode(element["response"], add_special_tokens=False)
        finish = element.get("teacher_finish_reason") or element.get("finish_reason")
        if finish == "length":
            out["response_truncated"] = True  # the teacher's own max_tokens cut it: no EOS
        else:
            ids.append(self.tokenizer.eos_token_id)
        out["response_len_raw"] = len(ids)
        if len(ids) > self.max_response_tokens:
            if self.overlong_response == "drop":
                out["dropped"] = "response_too_long"
            else:
                ids = ids[: self.max_response_tokens]  # keep the start, no EOS: see module docstring
                out["response_truncated"] = True
        out["response_ids"] = np.asarray(ids, np.int32)
        return out
