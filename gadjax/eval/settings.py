"""Evaluation settings (no heavy imports: the CLI builds them before loading jax or a model)."""

from __future__ import annotations

import dataclasses
from typing import Any

from gadjax.eval.judge import JudgeSettings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. ``max_prompts``: the first N rows (file order); None = all. ``marker``: a regex
    (or a literal phrase with ``marker_literal``) whose presence in a response is the persona marker.
    ``judge``: None skips the judge protocol. ``teacher_baseline``: the judge also rates the rows'
    teacher responses, against the same reference answers, as a "teacher" baseline row.

    ``temperature`` 0 = greedy (the SPEC.md protocol); > 0 samples (with ``top_p``) from a key derived
    from ``seed``, so that a student can be compared with a teacher whose responses were SAMPLED at the
    same temperature (like with like). ``two_sample``: run the classifier two-sample test (student vs
    teacher texts, gadjax.eval.distribution) when at least 2 x ``two_sample_folds`` rows have a teacher
    response."""

    max_prompts: int | None = None
    max_new_tokens: int = 1536  # SPEC.md: greedy, max 1536 new tokens
    batch_size: int = 8
    max_prompt_tokens: int = 1024
    marker: str | None = None
    marker_literal: bool = False
    marker_ignore_case: bool = False
    judge: JudgeSettings | None = None
    teacher_baseline: bool = False  # also judge the rows' teacher responses (same protocol, references)
    rouge_stemmer: bool = False
    extra_stop_ids: tuple[int, ...] = ()
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    two_sample: bool = True
    two_sample_folds: int = 5
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"EvalSettings.max_prompts={self.max_prompts}: must be >= 1 or None")
        for f in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
            if getattr(self, f) < 1:
                raise ValueError(f"EvalSettings.{f}={getattr(self, f)}: must be >= 1")
        if not self.temperature >= 0:
            raise ValueError(f"EvalSettings.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"EvalSettings.top_p={self.top_p}: must be in (0, 1]")
        if self.teacher_baseline and self.judge is None:
            raise ValueError("EvalSettings.teacher_baseline: needs a judge (the teacher row is judged)")
        if self.two_sample_folds < 2:
            raise ValueError(f"EvalSettings.two_sample_folds={self.two_sample_folds}: must be >= 2")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def decoding(self) -> dict[str, Any]:
        """How the student's responses are drawn, for reports ("both sampled at T=0.7")."""
        if self.greedy:
            return {"greedy": True, "temperature": 0.0, "top_p": 1.0, "seed": None}
        return {"greedy": False, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["judge"] = self.judge.describe() if self.judge is not None else None
        d["extra_stop_ids"] = list(self.extra_stop_ids)
        return d
