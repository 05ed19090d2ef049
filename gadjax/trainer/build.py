"""Building a run from its config: mesh, tokenizer, student / discriminator / reference, data, teacher.

Nothing here trains; gadjax/train.py calls these once and then loops.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from gadjax import config as config_lib
from gadjax.algo.optim import make_optimizer
from gadjax.models.attention import resolve as resolve_attention
from gadjax.models.config import ModelConfig
from gadjax.models.decoder import Decoder
from gadjax.models.discriminator import Discriminator, discriminator_from_decoder
from gadjax.models.hf_io import load_decoder, load_discriminator
from gadjax.models.sharding import init_sharded
from gadjax.models.tokenizer import load_tokenizer
from gadjax.rollout.sampler import SamplingConfig
from gadjax.run_dir import RunDir

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_kwargs(config: ConfigDict) -> dict[str, Any]:
    """Decoder keyword arguments; model.attention is resolved (and checked) for this process's platform."""
    m = config.model
    dtype = DTYPES[m.dtype]
    attention = resolve_attention(m.attention, dtype=dtype)
    return dict(dtype=dtype, param_dtype=DTYPES[m.param_dtype], remat=m.remat, attention=attention)


def student_config(config: ConfigDict) -> ModelConfig:
    if config.model.random_init.enabled:
        return ModelConfig.from_hf_dict(
            dict(config.model.random_init.hf_config), source="config.model.random_init"
        )
    if config.model.path.endswith(".gguf"):
        from gadjax.models.gguf import read_gguf_config

        return ModelConfig.from_hf_dict(read_gguf_config(config.model.path), source=config.model.path)
    return ModelConfig.from_file(config.model.path)


def build_tokenizer(config: ConfigDict):
    path = config.model.tokenizer or config.model.path
    if not path:
        raise ValueError("config.model.tokenizer: needed when the model is randomly initialised")
    return load_tokenizer(path)


def build_reward(config: ConfigDict, tokenizer: Any):
    """The gad stage's programmatic reward (config.reward.kind = "regex"), or None: D's score."""
    r = config.reward
    if r.kind == "discriminator":
        return None
    from gadjax.trainer.rewards import RegexReward

    return RegexReward(tokenizer, r.pattern, r.negative_pattern)


def build_student(config: ConfigDict, mesh: Mesh) -> Decoder:
    """The student from model.path (HF dir / GGUF), or random weights (model.random_init), sharded."""
    kw = model_kwargs(config)
    if config.model.random_init.enabled:
        cfg = student_config(config)
        return init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(config.seed), **kw), mesh)
    return load_decoder(config.model.path, mesh=mesh, **kw)


def build_discriminator(config: ConfigDict, mesh: Mesh, student: Decoder) -> Discriminator:
    """D = a copy of the student backbone + a fresh head (SPEC.md), or loaded from disc.path."""
    d = config.disc
    if d.path:
        return load_discriminator(
            d.path,
            mesh=mesh,
            seed=config.seed + 1,
            head_init=d.head_init,
            head_std=d.head_std,
            **model_kwargs(config),
        )
    return discriminator_from_decoder(
        student, seed=config.seed + 1, head_init=d.head_init, head_std=d.head_std
    )


def build_optimizer(opt: ConfigDict, total_steps: int):
    return make_optimizer(
        opt.lr,
        opt.schedule,
        opt.warmup_steps,
        total_steps if opt.schedule == "warmup_cosine" else None,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        grad_clip_norm=opt.grad_clip_norm,
        weight_decay_mask=opt.weight_decay_mask,
    )


def sampling_config(config: ConfigDict, tokenizer: Any, model_cfg: ModelConfig) -> SamplingConfig:
    r = config.rollout
    stop = set(model_cfg.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        stop.add(int(tokenizer.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return SamplingConfig(
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        n_samples=r.n_samples,
        stop_ids=frozenset(stop),
        pad_id=int(pad),
        prompt_buckets=tuple(r.prompt_buckets),
        layer_loop=r.layer_loop,
        micro_batches=r.micro_batches,
        batching=r.batching,
        slots=r.slots,
        tail_compaction=r.tail_compaction,
    )


def teacher_cache_name() -> str:
    """Each process's teacher cache in the run dir (SQLite files are not shared between hosts)."""
    return f"teacher_cache.p{jax.process_index()}.sqlite"


def build_teacher(config: ConfigDict):
    """The online teacher client (None when teacher.enabled is off)."""
    t = config.teacher
    if not t.enabled:
        return None
    from gadjax.teacher.client import TeacherClient
    from gadjax.teacher.config import TeacherConfig

    cache = t.cache_path
    if not cache:  # this process's own SQLite file on this host's disk; a resumed run takes the bucket's copy
        run_dir = RunDir(config.run_dir)
        run_dir.fetch(teacher_cache_name())
        cache = run_dir.local_path(teacher_cache_name())
    return TeacherClient(
        TeacherConfig(
            base_url=t.base_url,
            model=t.model,
            api_key_env=t.api_key_env or None,
            system_prompt=t.system_prompt or None,
            temperature=t.temperature,
            top_p=t.top_p,
            max_tokens=t.max_tokens,
            concurrency=t.concurrency,
            requests_per_s=t.requests_per_s,
            tokens_per_min=t.tokens_per_min,
            timeout_s=t.timeout_s,
            max_retries=t.max_retries,
            cache_path=cache,
            max_requests=t.max_requests,
            max_total_tokens=t.max_total_tokens,
        )
    )


def build_data(config: ConfigDict, tokenizer: Any, teacher: Any):
    """The grain pipeline over data.train (responses from the corpus or the teacher).

    config.data.process_sharding picks what each process reads:
      "rows"       its own disjoint shard (rows [i::count]) and local batch_size // count rows per step;
                   global_host_batch all-gathers the local batches.
      "replicate"  the whole dataset through the identical single-process pipeline, so every process
                   builds the same GLOBAL batch itself (deterministic: the same batches for any process
                   count; each process tokenizes everything).
    """
    from gadjax.data.pipeline import DataConfig, DataPipeline
    from gadjax.data.sources import open_source

    d = config.data
    source = open_source(
        list(d.train), kind=d.kind, skip_bad_rows=d.skip_bad_rows, require_response=teacher is None
    )
    dc = DataConfig(
        batch_size=d.batch_size,
        max_prompt_tokens=d.max_prompt_tokens,
        max_response_tokens=d.max_response_tokens,
        overlong_prompt=d.overlong_prompt,
        overlong_response=d.overlong_response,
        buckets=d.buckets,
        min_bucket=d.min_bucket,
        seed=config_lib.stage_seed(config.seed, config.stage),
        shuffle=d.shuffle,
        num_epochs=d.num_epochs,
        worker_count=d.worker_count,
        teacher_max_ahead=config.teacher.max_ahead,
        # Each host stops on its own past the global limit (the trainer also checks the sum every step).
        teacher_max_failed=config.teacher.max_failed_prompts if teacher is not None else -1,
    )
    if d.process_sharding == "replicate":
        return DataPipeline(source, tokenizer, dc, teacher=teacher, process_index=0, process_count=1)
    return DataPipeline(source, tokenizer, dc, teacher=teacher)


def steps_per_epoch(pipeline: Any) -> int:
    return len(pipeline.shard_indices) // pipeline.local_batch_size


def copy_tree(tree: Any) -> Any:
    """A real copy (new buffers) so donating one tree never invalidates the other."""
    return jax.tree.map(jnp.copy, tree)


def global_host_batch(
    local: dict[str, np.ndarray], pad_id: int, process_sharding: str = "rows"
) -> dict[str, np.ndarray]:
    """Every process's local rows concatenated (in process order) on every process.

    The sampler and jax.device_put then see the same global numpy batch everywhere; each process places
    only its addressable shards. Batches are small integer arrays, so the all-gather is cheap. With
    process_sharding="replicate" the local batch already is the global one (nothing to gather).
    """
    if jax.process_count() == 1 or process_sharding == "replicate":
        return local
    from jax.experimental import multihost_utils

    from gadjax.data.batching import pad_batch_to
    from gadjax.data.global_batch import agree_shapes

    p, r = agree_shapes(local)
    local = pad_batch_to(local, p, r, pad_id)
    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in local.items()}
