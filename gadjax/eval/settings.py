"""Evaluation settings (no heavy imports: the CLI builds them before loading jax or a model)."""

from __future__ import annotations

import dataclasses
from typing import Any

from gadjax.eval.judge import JudgeSettings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``max_prompts``: the first N rows (file order); None = all. ``marker``: a regex
    (or a literal phrase with ``marker_literal``) whose presence in a response is the persona marker.
    ``judge``: None skips the judge protocol."""

    max_prompts: int | None = None
    max_new_tokens: int = 1536  # SPEC.md: greedy, max 1536 new tokens
    batch_size: int = 8
    max_prompt_tokens: int = 1024
    marker: str | None = None
    marker_literal: bool = False
    marker_ignore_case: bool = False
    judge: JudgeSettings | None = None
    rouge_stemmer: bool = False
    extra_stop_ids: tuple[int, ...] = ()
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"EvalSettings.max_prompts={self.max_prompts}: must be >= 1 or None")
        for f in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
            if getattr(self, f) < 1:
                raise ValueError(f"EvalSettings.{f}={getattr(self, f)}: must be >= 1")

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["judge"] = self.judge.describe() if self.judge is not None else None
        d["extra_stop_ids"] = list(self.extra_stop_ids)
        return d
