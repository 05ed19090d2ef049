"""Validation of a training config: every key the trainer relies on, checked before anything is built or
compiled; the first bad key is a ConfigValidationError naming it (``config.<key>: ...``).

It lives with the trainer, not in gadjax/config.py: the checks ask the layers above the config (models'
attention backends, the rollout's layer loops, LoRA targets, evaluation settings) what they accept,
and imports run downwards only (docs/architecture.md).
"""

from __future__ import annotations

import re
from typing import Any

from ml_collections import ConfigDict

from gadjax import paths
from gadjax.algo.kl import KL_KINDS
from gadjax.algo.losses import LOSS_AGG_MODES
from gadjax.config import DTYPES, PROCESS_SHARDINGS, REMATS, STAGES, ConfigValidationError
from gadjax.data import packing
from gadjax.models.attention import BACKENDS
from gadjax.models.config import EXPORT_DTYPES
from gadjax.rollout.config import BATCHINGS, LAYER_LOOPS
from gadjax.trainer import adapters, evaluation


def _fail(key: str, msg: str) -> None:
    raise ConfigValidationError(f"config.{key}: {msg}")


def validate(c: ConfigDict) -> ConfigDict:
    """Check every key the trainer relies on; raise ConfigValidationError naming the first bad one."""
    if not c.stage:  # the recipe configs leave it to the launch line (docs/recipe.md)
        _fail("stage", f"not set: pass --config.stage= one of {STAGES} (warmup, then gad; docs/recipe.md)")
    if c.stage not in STAGES:
        _fail("stage", f"{c.stage!r} is not one of {STAGES}")
    if not c.run_dir:
        _fail("run_dir", "must be set")
    if not c.model.path and not c.model.random_init.enabled:
        _fail("model.path", "must name a HF directory or .gguf file (or enable model.random_init)")
    if c.model.path and not paths.exists(c.model.path):
        _fail("model.path", f"{c.model.path!r} does not exist")
    for key in ("dtype", "param_dtype"):
        if c.model[key] not in DTYPES:
            _fail(f"model.{key}", f"{c.model[key]!r} is not one of {DTYPES}")
    adapters.validate(c, _fail, DTYPES)
    if c.model.remat not in REMATS:
        _fail("model.remat", f"{c.model.remat!r} is not one of {REMATS}")
    if c.model.attention not in BACKENDS:
        _fail("model.attention", f"{c.model.attention!r} is not one of {BACKENDS}")
    if c.disc.loss not in ("bradley_terry", "bce"):
        _fail("disc.loss", f"{c.disc.loss!r} is not 'bradley_terry' or 'bce'")
    if c.reward.kind not in ("discriminator", "regex"):
        _fail("reward.kind", f"{c.reward.kind!r} is not 'discriminator' or 'regex'")
    if c.reward.kind == "regex":
        if not c.reward.pattern:
            _fail("reward.pattern", "reward.kind='regex' needs a pattern")
        for key in ("pattern", "negative_pattern"):
            try:
                re.compile(c.reward[key])
            except re.error as e:
                _fail(f"reward.{key}", f"not a valid regular expression: {e}")
    if c.disc.head_init not in ("zero", "normal"):
        _fail("disc.head_init", f"{c.disc.head_init!r} is not 'zero' or 'normal'")
    if c.export.dtype and c.export.dtype not in EXPORT_DTYPES:
        _fail("export.dtype", f"{c.export.dtype!r} is not one of {EXPORT_DTYPES} (or '' for the model's own)")
    if len(tuple(c.mesh.shape)) != 3:
        _fail("mesh.shape", f"{tuple(c.mesh.shape)} must have 3 entries (data, fsdp, tensor)")
    if not c.data.train:
        _fail("data.train", "no training files given")
    for path in c.data.train:
        if not paths.exists(path):
            _fail("data.train", f"{path!r} does not exist")
    kinds = sorted({_data_kind(p) for p in c.data.train})
    if c.data.kind == "auto" and len(kinds) > 1:  # the data source reads one kind, chosen by the first file
        _fail("data.train", f"mixes {' and '.join(kinds)} files; one kind per run (convert the others)")
    _positive(c, "data.batch_size", "data.max_prompt_tokens", "data.max_response_tokens")
    _positive(c, "rollout.n_samples", "rollout.max_new_tokens", "rollout.micro_batches")
    _positive(c, "train.logprob_chunk")
    _positive(c, "train.micro_batches_g", "train.micro_batches_d", "train.d_updates")
    _positive(c, "checkpoint.every", "checkpoint.keep")
    for opt in ("optim_g", "optim_d"):
        if c[opt].lr <= 0:
            _fail(f"{opt}.lr", f"must be > 0 (got {c[opt].lr})")
        if c[opt].schedule not in ("constant", "warmup_cosine"):
            _fail(f"{opt}.schedule", f"{c[opt].schedule!r} is not 'constant' or 'warmup_cosine'")
    if c.rollout.temperature < 0:
        _fail("rollout.temperature", "must be >= 0")
    if not 0 < c.rollout.top_p <= 1:
        _fail("rollout.top_p", "must be in (0, 1]")
    if c.rollout.layer_loop not in LAYER_LOOPS:
        _fail("rollout.layer_loop", f"{c.rollout.layer_loop!r} is not one of {LAYER_LOOPS}")
    if c.rollout.batching not in BATCHINGS:
        _fail("rollout.batching", f"{c.rollout.batching!r} is not one of {BATCHINGS}")
    if c.rollout.slots < 0:
        _fail("rollout.slots", f"must be >= 0 (0 = auto), got {c.rollout.slots}")
    if c.loss.kl_beta < 0:
        _fail("loss.kl_beta", "must be >= 0")
    if c.loss.kl_kind not in KL_KINDS:
        _fail("loss.kl_kind", f"{c.loss.kl_kind!r} is not one of {KL_KINDS}")
    if c.loss.loss_agg_mode not in LOSS_AGG_MODES:
        _fail("loss.loss_agg_mode", f"{c.loss.loss_agg_mode!r} is not one of {LOSS_AGG_MODES}")
    if c.stage == "gad" and c.rollout.n_samples < 2:
        _fail("rollout.n_samples", "gad needs >= 2 samples per prompt (a group of 1 has zero advantage)")
    if c.stage != "seqkd" and c.data.batch_size % c.rollout.micro_batches:
        _fail("rollout.micro_batches", f"must divide data.batch_size={c.data.batch_size}")
    if c.stage != "seqkd" and c.data.batch_size % c.train.micro_batches_d:
        _fail("train.micro_batches_d", f"must divide data.batch_size={c.data.batch_size}")
    rows_g = c.data.batch_size * (c.rollout.n_samples if c.stage == "gad" else 1)
    if rows_g % c.train.micro_batches_g:
        _fail("train.micro_batches_g", f"must divide the G batch of {rows_g} rows")
    if c.data.process_sharding not in PROCESS_SHARDINGS:
        _fail("data.process_sharding", f"{c.data.process_sharding!r} is not one of {PROCESS_SHARDINGS}")
    if c.data.process_sharding == "replicate" and c.teacher.enabled:
        # Every host would ask the teacher for every prompt, and sampled answers differ per host, so the
        # hosts' "identical" global batches would silently disagree.
        _fail("data.process_sharding", "'replicate' needs offline responses (teacher.enabled=False)")
    if c.teacher.enabled and (not c.teacher.base_url or not c.teacher.model):
        _fail("teacher.base_url", "teacher.enabled needs teacher.base_url and teacher.model")
    if c.stage == "gad" and not c.init_from and not c.allow_gad_from_scratch:
        _fail(
            "init_from",
            "gad starts from the warmup run: pass --config.init_from=<warmup run_dir> (or opt in to GAD "
            "without warmup, the paper's ablation, with --config.allow_gad_from_scratch=true)",
        )
    mf = c.teacher.max_failed_prompts
    if isinstance(mf, bool) or not isinstance(mf, int) or mf < -1:
        _fail("teacher.max_failed_prompts", f"must be an integer >= 0, or -1 for no limit (got {mf!r})")
    if c.init_from and not paths.isdir(paths.join(c.init_from, "checkpoints")):
        _fail("init_from", f"{c.init_from!r} holds no checkpoints/ (it must be an earlier run_dir)")
    evaluation.validate(c, _fail)
    packing.validate(c, _fail)
    return c


def _data_kind(path: str) -> str:
    """What data.kind='auto' reads `path` as (gadjax.data.sources.open_source)."""
    return "tfds" if paths.isdir(path) else ("parquet" if path.endswith(".parquet") else "jsonl")


def _positive(c: ConfigDict, *keys: str) -> None:
    for key in keys:
        node: Any = c
        for part in key.split("."):
            node = node[part]
        if not isinstance(node, int) or node < 1:
            _fail(key, f"must be a positive integer (got {node!r})")
