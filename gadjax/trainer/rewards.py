"""Programmatic (oracle) rewards for the gad stage's controls, computed on the host from decoded text.

SPEC.md's reward is the discriminator's score. A known-good reward, such as the demo persona's marker,
separates "the RL plumbing moves the policy" from "the discriminator is informative": the study's
oracle-reward control trains G on it through the same GRPO step (config.reward.kind = "regex").
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np


class RegexReward:
    """r(y) = #matches(pattern, text) - #matches(negative_pattern, text), case-insensitive, where text is
    the decoded response (special tokens skipped)."""

    def __init__(self, tokenizer: Any, pattern: str, negative_pattern: str = ""):
        self.tokenizer = tokenizer
        self.pattern = re.compile(pattern, re.IGNORECASE)
        self.negative = re.compile(negative_pattern, re.IGNORECASE) if negative_pattern else None

    def score_text(self, text: str) -> float:
        r = len(self.pattern.findall(text))
        if self.negative is not None:
            r -= len(self.negative.findall(text))
        return float(r)

    def __call__(self, response_ids: np.ndarray, response_mask: np.ndarray) -> np.ndarray:
        """Rewards [rows] float32 for right-padded response tokens [rows, R] and their mask."""
        ids, mask = np.asarray(response_ids), np.asarray(response_mask).astype(bool)
        pairs = zip(ids, mask, strict=True)
        texts = [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in pairs]
        return np.asarray([self.score_text(t) for t in texts], np.float32)
