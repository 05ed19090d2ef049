"""When a program does not fit: the numbers in XLA's RESOURCE_EXHAUSTED text, and what to change."""

from __future__ import annotations

import re

from ml_collections import ConfigDict

_OOM_USED = re.compile(r"Used\s+([\d.]+)([KMGT]?)i?B?\s+of\s+([\d.]+)([KMGT]?)i?B?\s+hbm", re.I)
_OOM_REQUIRED = re.compile(
    r"required for ([\w ]+?) \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", re.I
)
_OOM_EXCEEDED = re.compile(r"Exceeded hbm capacity by\s+([\d.]+)([KMGT]?)", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_oom(message: str) -> dict[str, float]:
    """Bytes used / capacity / excess from XLA's RESOURCE_EXHAUSTED text (whatever of them it names)."""
    out: dict[str, float] = {}
    m = _OOM_REQUIRED.search(message)  # jax 0.10 / libtpu 0.0.42: "... required for HLO temporaries (2.08T)"
    if m:
        out[m.group(1).strip().replace(" ", "_").lower() + "_bytes"] = (
            float(m.group(2)) * _UNITS[m.group(3).upper()]
        )
        out["capacity_bytes"] = float(m.group(4)) * _UNITS[m.group(5).upper()]
    m = _OOM_USED.search(message)
    if m:
        out["used_bytes"] = float(m.group(1)) * _UNITS[m.group(2).upper()]
        out["capacity_bytes"] = float(m.group(3)) * _UNITS[m.group(4).upper()]
    m = _OOM_EXCEEDED.search(message)
    if m:
        out["exceeded_bytes"] = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not out:  # older formats: any "<number><unit>" sizes, largest first
        sizes = [float(v) * _UNITS[u.upper()] for v, u in re.findall(r"([\d.]+)\s*([KMGT])i?B\b", message)]
        if sizes:
            out["largest_size_in_message_bytes"] = max(sizes)
    return out


def advice(config: ConfigDict, program: str, num_chips: int) -> str:
    """What to change, with the config's current values, most effective first for `program`."""
    t, r = config.train, config.rollout
    tips = [f"use a larger slice (more chips than {num_chips})"]
    if program == "g_step" or program == "ref_logp":
        tips.append(f"raise train.micro_batches_g (now {t.micro_batches_g}; fewer rows live at once)")
    if program == "d_step":
        tips.append(f"raise train.micro_batches_d (now {t.micro_batches_d})")
    if program == "rollout":
        tips.append(f"raise rollout.micro_batches (now {r.micro_batches}; fewer prompts' KV caches at once)")
    if program != "rollout" and config.model.remat != "full":
        tips.append(f"set model.remat='full' (now {config.model.remat!r})")
    tips.append(
        f"lower rollout.n_samples ({r.n_samples}), data.batch_size ({config.data.batch_size}), "
        f"rollout.max_new_tokens ({r.max_new_tokens}) or data.max_prompt_tokens "
        f"({config.data.max_prompt_tokens})"
    )
    tips.append(f"shard weights wider (a larger fsdp entry in mesh.shape, now {tuple(config.mesh.shape)})")
    return "To fit: " + "; ".join(tips)
