"""The length mix a real GAD step carries: prompt and response token counts drawn like the paper's data.

One shared workload for the benchmarks, the tests and the compile-only plan (packing, continuous
batching), so a speed-up is measured on the rows users have, not only on full-length ones.

Public figures it is built from:
- LMSYS-Chat-1M user prompts average about 69.5 tokens per turn with a long tail (Zheng et al. 2023,
  "LMSYS-Chat-1M: A Large-Scale Real-World LLM Conversation Dataset", arXiv 2309.11998, Table 1).
- GPT-5-Chat's answers on the LMSYS test set average about 330 tokens; GAD students' about 440, seqkd's
  about 320 (Ye et al. 2025, "Black-Box On-Policy Distillation of Large Language Models", arXiv 2511.10643).
- The released train split (LMSYS-Chat-GPT-5-Chat-Response) is 366 MB for 192,014 rows, about 1.9 kB
  of text per row: roughly 400-500 tokens per (prompt, response) row.
- Caps: 2,048 prompt and 1,536 response tokens (the paper's launch scripts; configs/v5p.py).

Each length is a log-normal with the published mean, clipped to [1, cap]: the log-normal's right tail is
the "few very long prompts / answers" that decide a padded batch's width. The spreads (sigma) are our
choice, not published: 1.2 for prompts (median ~34 tokens, 0.03% over 2,048) and 0.8 for responses
(median ~240, ~1% reaching the 1,536 cap, the answers a length cap truncates).

``scaled(...)`` keeps the shape of the distribution for smaller caps (CPU benchmarks: 512 / 384 is the
paper's mix at a quarter of the lengths): the means scale with the caps, the spreads stay.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class LengthProfile:
    """Log-normal prompt and response lengths (tokens) with the given means, clipped to [1, cap]."""

    prompt_mean: float = 69.5
    prompt_sigma: float = 1.2
    prompt_cap: int = 2048
    response_mean: float = 330.0
    response_sigma: float = 0.8
    response_cap: int = 1536

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (prompt_len, response_len) pairs as two int64 arrays, each in [1, its cap]."""
        prompts = _clipped_lognormal(rng, n, self.prompt_mean, self.prompt_sigma, self.prompt_cap)
        responses = _clipped_lognormal(rng, n, self.response_mean, self.response_sigma, self.response_cap)
        return prompts, responses

    def sample_prompts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return _clipped_lognormal(rng, n, self.prompt_mean, self.prompt_sigma, self.prompt_cap)

    def sample_responses(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return _clipped_lognormal(rng, n, self.response_mean, self.response_sigma, self.response_cap)

    def scaled(self, prompt_cap: int, response_cap: int) -> LengthProfile:
        """The same shape of distribution for smaller (or larger) caps: each mean scales with its cap."""
        return dataclasses.replace(
            self,
            prompt_mean=self.prompt_mean * prompt_cap / self.prompt_cap,
            prompt_cap=prompt_cap,
            response_mean=self.response_mean * response_cap / self.response_cap,
            response_cap=response_cap,
        )

    def expected_tokens(self, samples: int = 200_000, seed: int = 0) -> dict[str, float]:
        """Monte-Carlo means of the clipped lengths and the real-token fraction of a row padded to the
        caps (what a padded layout computes that is not padding)."""
        p, r = self.sample(np.random.default_rng(seed), samples)
        row = float(np.mean(p + r))
        return {
            "prompt_mean": float(np.mean(p)),
            "response_mean": float(np.mean(r)),
            "row_mean": row,
            "real_fraction_at_caps": row / (self.prompt_cap + self.response_cap),
            "response_at_cap_fraction": float(np.mean(r == self.response_cap)),
        }


PAPER = LengthProfile()  # the paper's scale: configs/v5p.py
GAD_STUDENT = dataclasses.replace(PAPER, response_mean=440.0)  # what a GAD student answers (longer)
CPU = PAPER.scaled(prompt_cap=512, response_cap=384)  # benchmarks and tests on CPU: a quarter of the lengths

PROFILES = {"paper": PAPER, "gad_student": GAD_STUDENT, "cpu": CPU}


def get_profile(name: str) -> LengthProfile:
    """A named profile (``paper`` | ``gad_student`` | ``cpu``); a clear error names the choices."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown length profile {name!r}; expected one of {sorted(PROFILES)}") from None


def _clipped_lognormal(rng: np.random.Generator, n: int, mean: float, sigma: float, cap: int) -> np.ndarray:
    """Log-normal draws with the given (unclipped) mean, rounded and clipped to [1, cap]."""
    mu = math.log(mean) - sigma * sigma / 2.0  # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2)
    x = np.rint(rng.lognormal(mu, sigma, size=n))
    return np.clip(x, 1, cap).astype(np.int64)
