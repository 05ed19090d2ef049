"""GAD with a Qwen2.5-7B-Instruct student and discriminator on a Cloud TPU v5p slice: the paper's reference
run (docs/recipe.md has the method, the numbers and the whole launch sequence).

    # Will it fit? Compile every program for the slice, on any machine with the tpu extra (no TPU needed):
    python -m gadjax.plan --config configs/v5p.py --topology v5p-16
    # The recipe, on every worker of the slice (tpu/README.md): warmup for one epoch, then gad from it
    python -m gadjax.train --config configs/v5p.py --config.stage=warmup \
        --config.run_dir=gs://BUCKET/gad/warmup
    python -m gadjax.train --config configs/v5p.py --config.stage=gad \
        --config.init_from=gs://BUCKET/gad/warmup --config.data.num_epochs=2 --config.run_dir=gs://BUCKET/gad/gad

The stage is not set here: a launch without --config.stage is a one-line config error, and so is gad
without init_from (`allow_gad_from_scratch=true` opts in to the paper's no-warmup ablation).
`data.num_epochs=1` is the warmup's budget (the paper: ~800 steps of 256 prompts, about one epoch of
~200K prompts); the gad launch line asks for 2 more epochs (~1,600 steps).

Paths: `model.path` is where each worker keeps the downloaded Hugging Face checkpoint (safetensors +
config.json + tokenizer), `data.train` the released teacher corpus (LMSYS-Chat-GPT-5-Chat-Response, 192,014
rows) copied to every worker's disk or on a bucket; set GADJAX_MODEL_DIR / GADJAX_DATA_DIR to move them.
The model's config.json is also written out below (`model.random_init.hf_config`, with
random_init.enabled=False) so the compile-only plan knows the shapes without the files.

Sizing (decided by the plan; the slice table is in docs/recipe.md "Hardware"): pure FSDP over all chips
(mesh (1, -1, 1)): the long-lived state (G and D params + Adam moments in f32, the f32 reference) is
~214 GB in all, 24.1 GiB per chip on v5p-16. Activations and the rollout's KV cache dominate; rows live
at once per chip are kept small with micro-batches (rollout, G, D) and full rematerialisation. With the
default splash attention and two rollout chunks it fits v5p-16 (8 chips) with 18% headroom.
"""

import importlib.util
import os

from gadjax.config import base_config

MODEL_DIR = os.environ.get("GADJAX_MODEL_DIR", os.path.expanduser("~/gadjax/models/Qwen2.5-7B-Instruct"))
DATA_DIR = os.environ.get("GADJAX_DATA_DIR", os.path.expanduser("~/gadjax/data"))

# Qwen/Qwen2.5-7B-Instruct config.json (the fields gadjax reads, values as published): configs/_qwen25.py,
# loaded by path (configs/ is not a package).
_QWEN25 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_qwen25.py")
_spec = importlib.util.spec_from_file_location("gadjax_configs_qwen25_for_v5p", _QWEN25)
_qwen25 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_qwen25)
QWEN25_7B_INSTRUCT = _qwen25.QWEN25_7B_INSTRUCT


def get_config():
    c = base_config()
    c.stage = ""  # set on the launch line: warmup, then gad with init_from (docs/recipe.md)
    c.allow_gad_from_scratch = False  # gad without init_from is a config error (it would skip the warmup)
    c.run_dir = "runs/v5p"
    c.model.path = MODEL_DIR
    c.model.tokenizer = MODEL_DIR
    c.model.random_init.enabled = False  # real weights from model.path; hf_config is for the plan only
    c.model.random_init.hf_config = dict(QWEN25_7B_INSTRUCT)
    c.model.dtype = "bfloat16"  # the paper: compute in bf16
    c.model.param_dtype = "float32"  # the paper: fp32 master weights
    c.model.remat = "full"
    c.disc.path = ""  # D starts as a copy of the student (the paper)

    c.data.train = [os.path.join(DATA_DIR, "lmsys_chat_gpt5_chat_response_train.parquet")]
    c.data.batch_size = 256  # prompts per step
    c.data.max_prompt_tokens = 2048
    c.data.max_response_tokens = 1536
    c.data.num_epochs = 1  # the warmup's budget (~1 epoch, as the paper); the gad launch line sets 2
    c.rollout.n_samples = 8
    c.rollout.temperature = 0.8
    c.rollout.top_p = 1.0
    c.rollout.max_new_tokens = 1536
    c.rollout.prompt_buckets = (256, 512, 1024, 2048)
    # Two rollout chunks of 128 prompts: only one chunk's KV cache exists at a time. Needed for v5p-16
    # (rollout 88.22 -> 59.16 GiB per chip; the G step's 77.96 is then the peak, 18% headroom); costs a
    # second read of the weights per decode step (rollout roofline 33.9 -> 35.0 s on v5p-16).
    c.rollout.micro_batches = 2

    # The paper's hyperparameters (base_config holds them; repeated here so the file is the record).
    c.optim_g.lr = 1e-6
    c.optim_d.lr = 1e-6
    c.optim_g.grad_clip_norm = 0.2
    c.optim_d.grad_clip_norm = 0.2
    c.loss.clip_eps = 0.2
    c.loss.kl_beta = 0.001
    c.loss.kl_kind = "low_var_kl"

    # 2048 G rows / 16 micro-batches = 128 rows live at once (4 per chip on v5p-64, 1 per chip on v5p-256);
    # 256 prompts / 32 D micro-batches = 8 teacher + 64 student sequences live at once.
    c.mesh.shape = (1, -1, 1)
    c.train.micro_batches_g = 16
    c.train.micro_batches_d = 32
    c.train.logprob_chunk = 256
    c.train.d_only_steps = 10
    c.checkpoint.every = 50
    c.metrics.progress = True
    c.plan = dict(topology="v5p-16")  # default slice of `python -m gadjax.plan`
    return c
