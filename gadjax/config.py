"""The training config: defaults (SPEC.md reference hyperparameters), stage seeds and path lists.

Config files in configs/ define `get_config()` that starts from `base_config()` and overrides fields;
`python -m gadjax.train --config configs/X.py --config.key=value` overrides more (a list key such as
data.train takes a path, comma-separated paths or a glob: `parse_path_list`). The checks of every key
(`gadjax.trainer.validation.validate`) run before anything is compiled and name the offending key.
"""

from __future__ import annotations

import ast
from typing import Any

from ml_collections import ConfigDict

from gadjax import paths
from gadjax.data import packing
from gadjax.teacher.config import DEFAULT_MAX_TOKENS

STAGES = ("seqkd", "warmup", "gad")
DTYPES = ("float32", "bfloat16")
REMATS = ("none", "full", "dots", "dots_no_batch")
PROCESS_SHARDINGS = ("rows", "replicate")


class ConfigValidationError(ValueError):
    """An invalid training config; the message names the key."""


def _optim(lr: float) -> ConfigDict:
    # SPEC.md: AdamW betas 0.9 / 0.999, wd 0.01, constant lr, grad-norm clip 0.2.
    return ConfigDict(
        dict(
            lr=lr,
            schedule="constant",
            warmup_steps=0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            weight_decay_mask="all",
            grad_clip_norm=0.2,
        )
    )


def _lora() -> ConfigDict:
    # targets: fnmatch patterns over q_proj k_proj v_proj o_proj gate_proj up_proj down_proj (or our
    # names q ... down; "attention", "mlp"). scale = alpha / rank, as PEFT. Dropout is not implemented.
    return ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets=("*_proj",)))


def base_config() -> ConfigDict:
    """Every key the trainer reads, with SPEC.md's defaults (GAD stage, Qwen2.5-7B-scale settings)."""
    c = ConfigDict()
    c.stage = "gad"
    c.run_dir = "runs/default"
    c.seed = 0
    c.resume = False  # continue exactly from the latest checkpoint in run_dir

    c.model = ConfigDict(
        dict(
            path="",  # HF directory or .gguf of the student
            tokenizer="",  # default: model.path
            random_init=ConfigDict(dict(enabled=False, hf_config={})),  # tests: random weights from a config
            dtype="float32",  # compute dtype (bfloat16 on accelerators)
            param_dtype="float32",  # master weights (SPEC.md: fp32)
            remat="none",
            # Attention backend (gadjax.models.attention): auto | xla | flash | splash | cudnn. auto: splash
            # on TPU, cudnn on GPU with bf16 (else xla), xla on CPU.
            attention="auto",
            lora=_lora(),  # rank > 0: train low-rank adapters of G, the base frozen (gadjax.models.lora)
            # dtype of every frozen LoRA base (G's with model.lora, D's with disc.lora); "" = param_dtype
            base_dtype="",
        )
    )
    c.disc = ConfigDict(
        dict(
            path="",  # default: the student's path (SPEC.md: D is a copy of the student)
            head_init="normal",
            head_std=0.02,
            loss="bradley_terry",  # or "bce" (the paper's ablation)
            # gad: True = D is not trained (a fixed reward model: the paper's off-policy ablation; its
            # scores and accuracy are still logged).
            frozen=False,
            # gad with init_from: False = D starts fresh from disc.path / the student with a new head
            # instead of the warmup's D (the paper's "no discriminator warmup" ablation).
            from_init_run=True,
            lora=_lora(),  # rank > 0: train adapters of D's backbone (its head always fully), base frozen
        )
    )
    # The generator's reward in the gad stage. "discriminator" (SPEC.md): r = D(x, y_s). "regex": a
    # programmatic (oracle) reward for controls, the count of `pattern` matches in the decoded response
    # minus the count of `negative_pattern` matches (case-insensitive); D still trains and is logged.
    # norm_by_std: GRPO's advantages (r - group mean) / group std (SPEC.md); False: Dr.GRPO's r - group mean
    # (arXiv 2503.20783), so a group D cannot tell apart gets small advantages instead of unit ones.
    c.reward = ConfigDict(dict(kind="discriminator", pattern="", negative_pattern="", norm_by_std=True))
    # Start G and D from an earlier run (the warmup result for gad). Empty: from the model paths.
    c.init_from = ""
    # gad without init_from starts G and D from the model paths (no warmup: the paper's ablation). The
    # recipe configs (v5p.py, v5p_lora.py, gpu.py) set False: there it is a config error.
    c.allow_gad_from_scratch = True

    c.mesh = ConfigDict(dict(shape=(1, -1, 1)))  # (data, fsdp, tensor); -1 takes the remaining devices
    c.distributed = ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))

    c.data = ConfigDict(
        dict(
            train=[],  # JSONL / parquet files or a tfds directory
            kind="auto",
            skip_bad_rows=False,
            batch_size=256,  # prompts per step (global)
            max_prompt_tokens=2048,
            max_response_tokens=DEFAULT_MAX_TOKENS,  # gadjax.teacher.config: one shared default
            overlong_prompt="truncate",
            overlong_response="truncate",
            buckets="pow2",
            min_bucket=16,
            shuffle=True,
            num_epochs=3,
            worker_count=0,
            # Multi-host: "rows" = each process reads its own disjoint shard (rows [i::count]) and the
            # local batches are all-gathered; "replicate" = every process runs the whole single-process
            # pipeline and builds the identical global batch itself (same batches for any process count;
            # each host tokenizes everything; offline responses only).
            process_sharding="rows",
        )
    )
    c.teacher = ConfigDict(
        dict(
            enabled=False,  # online teacher: prompts without responses go through the API
            base_url="",
            model="",
            api_key_env="OPENAI_API_KEY",
            system_prompt="",
            temperature=1.0,
            top_p=1.0,
            max_tokens=DEFAULT_MAX_TOKENS,  # = collect's --max-tokens: the two share cache entries
            concurrency=8,
            # default: <run_dir>/teacher_cache.p<process>.sqlite; with a gs:// run_dir it lives on this
            # host ($GADJAX_LOCAL_DIR) and a copy goes to the bucket at each checkpoint (gadjax.run_dir).
            cache_path="",
            max_ahead=512,
            # Rate limits, as collect's --requests-per-s / --tokens-per-min (0 = unlimited), per process.
            requests_per_s=0.0,
            tokens_per_min=0.0,
            timeout_s=120.0,  # per request
            max_retries=8,  # for 429 / 5xx / timeouts / connection errors, with backoff
            # Spending limits (0 = none), totals for this process's cache file over every run that used
            # it: at the limit the run stops (exit 3); what was received is in the cache, and a resume
            # with a higher limit does not pay for it again.
            max_requests=0,
            max_total_tokens=0,
            # Prompts the teacher does not answer (a refusal, HTTP 400, a content filter, retries run out)
            # are skipped, counted (metric teacher_failed_prompts, all hosts) and logged with their row;
            # past this many the run saves a checkpoint and exits 4. -1 = no limit.
            max_failed_prompts=100,
        )
    )
    c.rollout = ConfigDict(
        dict(
            n_samples=8,
            temperature=0.8,
            top_p=1.0,
            top_k=0,
            max_new_tokens=DEFAULT_MAX_TOKENS,
            prompt_buckets=(64, 128, 256, 512, 1024, 2048),
            # Decode layer loop: "auto" (unrolled per-layer weights on one CPU device, else the scanned
            # model), "scan" (no second copy of the weights during a rollout) or "unrolled".
            layer_loop="auto",
            # Generate each step's rollouts in this many chunks of prompts, one after another: only one
            # chunk's KV cache exists at a time. Same samples as 1 (bitwise on CPU). Divides data.batch_size.
            micro_batches=1,
            # "static": all B*N rows decode together until the last stops; "continuous": `slots` decode
            # slots, a stopped row's slot takes the next (prompt, sample), so decode work follows the rows
            # still generating (README "Rollout batching"). Same key, same tokens either way.
            batching="static",
            slots=0,  # continuous decode slots per chunk; 0 = half the chunk's rows
            # Continuous: times the slot batch may halve in the tail (queue empty, the live rows fit in half
            # the slots); each level is one more decode loop in the program. 0 = off.
            tail_compaction=3,
        )
    )
    c.optim_g = _optim(1e-6)
    c.optim_d = _optim(1e-6)
    c.loss = ConfigDict(
        dict(
            clip_eps=0.2,
            clip_ratio_c=3.0,
            loss_agg_mode="token-mean",
            kl_beta=0.001,
            kl_kind="low_var_kl",
            entropy_coeff=0.0,
        )
    )
    c.train = ConfigDict(
        dict(
            steps=0,  # 0: one pass over num_epochs of the data
            d_only_steps=10,  # warmup: D trains alone first
            # D updates per step (warmup and gad), each on the step's same (teacher, student) pairs; G's
            # rewards are the first update's pre-update scores (SPEC.md). More keeps D up with a moving G.
            d_updates=1,
            micro_batches_g=1,
            micro_batches_d=1,
            logprob_chunk=256,
            **packing.DEFAULTS,  # packing, pack_length, pack_rows: packed passes (gadjax.data.packing)
            max_bad_steps=3,  # consecutive non-finite steps before the run stops
            debug_kill_at_step=0,  # tests: SIGKILL this process right after this step's checkpoint
            debug_signal_at_step=0,  # tests: SIGTERM this process after this step (a preemption notice)
            debug_signal_process=-1,  # tests: only this process gets that SIGTERM (-1: every process)
        )
    )
    # run_dir, checkpoint.dir and init_from may be gs://BUCKET/... (README "Runs on cloud storage").
    c.checkpoint = ConfigDict(dict(every=50, keep=3, dir=""))  # dir default: <run_dir>/checkpoints
    c.metrics = ConfigDict(
        dict(
            tensorboard=True,
            wandb=False,
            wandb_project="gadjax",
            progress=True,
            # gs:// run_dir: metrics.jsonl and TensorBoard files are written on this host and copied to
            # the bucket this often (seconds), at every checkpoint and at the end.
            sync_every_s=300.0,
        )
    )
    # Reward-hacking watch (SPEC.md): warn when these drift out of band.
    c.guards = ConfigDict(
        dict(
            response_length_max_ratio=2.0,  # mean length vs its first-logged value
            d_acc_low=0.55,
            d_acc_high=0.98,
            window=20,
        )
    )
    # export.dtype: the HF export's weight dtype (bfloat16 | float16 | float32); "": the model's own
    # (model.path's torch_dtype; float32 for random init and GGUF).
    c.export = ConfigDict(dict(hf=True, discriminator=False, dtype=""))
    # Evaluation during training (gadjax.trainer.evaluation): SPEC.md evaluates every 50 steps.
    c.eval = ConfigDict(
        dict(
            every=0,  # steps between evaluations (and at the last step); 0 = off
            # No evaluation before this step (then at the multiples of `every`, and the last step): e.g. the
            # demo's seqkd baseline is evaluated over the same generator updates as the gad stage it is
            # compared with (its selection window), not at updates gad never had. 0 = from the first.
            start_step=0,
            data=[],  # held-out rows with teacher responses: jsonl / parquet files or a tfds dir
            max_prompts=0,  # the first N rows; 0 = all
            batch_size=8,
            max_new_tokens=0,  # 0 = rollout.max_new_tokens
            temperature=0.0,  # 0 = greedy (SPEC.md); > 0 samples from eval.seed (never a training stream)
            seed=0,
            marker="",  # a regex whose rate (and gap to the teacher's) is logged, e.g. a persona marker
            two_sample=True,  # the C2ST accuracy (student vs teacher texts)
            # The judge (SPEC.md "Evaluation") is slow and paid: its own cadence, a multiple of eval.every
            # (and the last step); 0 = never. Process 0 asks it; every host gets the same scores.
            judge_every=0,
            judge=ConfigDict(
                dict(
                    base_url="",  # an OpenAI-compatible endpoint
                    model="",
                    api_key_env="OPENAI_API_KEY",  # the NAME of the variable holding the key; "" = none
                    temperature=0.0,
                    reference_max_tokens=1024,
                    rating_max_tokens=512,
                    concurrency=4,
                    timeout_s=120.0,
                    max_retries=4,
                    cache_path="",  # "" = <run_dir>/judge_cache.sqlite (a resumed run does not pay twice)
                )
            ),
        )
    )
    # Checkpoint selection (SPEC.md: best judge score whose length stays in band).
    c.select = ConfigDict(
        dict(
            # An eval metric without the eval/ prefix (rouge_l, c2st_accuracy, judge_score); "" = off.
            metric="",
            mode="max",
            tiebreak=(),  # further eval metrics (same mode) compared when `metric` ties
            length_band=(),  # (low, high) x the reference length; () = any length
            # "teacher": teacher_length_mean on eval.data; "first": the run's first evaluation.
            length_reference="teacher",
        )
    )
    c.peak_flops_per_device = 0.0  # 0: look up the device kind; used for MFU
    return c


# Each stage draws its own random stream from the same seed: without it, gad (init_from warmup) would
# replay warmup's prompt order and, with inverse-CDF sampling, nearly the same rollouts D trained on.
STAGE_STREAMS = {"seqkd": 1, "warmup": 2, "gad": 3}


def stage_seed(seed: int, stage: str) -> int:
    """The 32-bit seed of `stage`'s random streams (data order, rollouts): a hash of (seed, stage)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), STAGE_STREAMS[stage]]).generate_state(1)[0])


def stage_defaults(c: ConfigDict) -> ConfigDict:
    """SPEC.md per-stage values where the stage changes them (seqkd: G lr 5e-6, no KL)."""
    if c.stage == "seqkd":
        c.optim_g.lr = 5e-6 if c.optim_g.lr == 1e-6 else c.optim_g.lr
        c.loss.kl_beta = 0.0
    return c


def parse_path_list(value: Any) -> list[Any]:
    """A list of files from the command line: a path, comma-separated paths and/or globs, or a list.

    Globs are expanded (sorted, like a shell); one that matches nothing stays as written, so `validate`
    names it as missing. A value that starts with "[" is read as a Python list literal. Lists pass through.
    """
    if isinstance(value, list | tuple):
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"not a list literal: {text!r}") from e
        if not isinstance(parsed, list | tuple):
            raise ValueError(f"expected a list, got {text!r}")
        return list(parsed)
    found: list[Any] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        matches = paths.glob(item) if any(c in item for c in "*?[") else []  # gs://b/*.jsonl too
        found.extend(matches or [item])
    return found
