"""GAD on a box of NVIDIA GPUs (80 GB class), bf16 compute, f32 master weights, FSDP over every GPU.

    pip install -e '.[cuda]'        # jax[cuda13]: needs an NVIDIA driver for CUDA 13 (README "GPU")
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95      # JAX's share of each GPU (default 0.75)
    # Will it fit? Compile-only plan for the box, on any machine with the tpu extra (no GPU needed):
    GADJAX_GPU_MODEL=7b python -m gadjax.plan --config configs/gpu.py --topology 8xh100
    # The recipe (docs/recipe.md): warmup for one epoch, then gad from it
    GADJAX_GPU_MODEL=7b python -m gadjax.train --config configs/gpu.py --config.stage=warmup \
        --config.run_dir=runs/gpu-7b-warmup
    GADJAX_GPU_MODEL=7b python -m gadjax.train --config configs/gpu.py --config.stage=gad \
        --config.init_from=runs/gpu-7b-warmup --config.data.num_epochs=2 --config.run_dir=runs/gpu-7b-gad

GADJAX_GPU_MODEL picks the student and discriminator (both Qwen2.5-Instruct, D a copy of the student):
- `7b` (the paper's student): Qwen2.5-7B-Instruct on 8 GPUs with the paper's batch (256 prompts x 8
  samples, 2048 + 1536 tokens). Sized by the compile-only plan (`--topology 8xh100`; numbers and how far
  they can be trusted: docs/recipe.md "Hardware"): more micro-batches than configs/v5p.py because an
  H100 has 80 GB where a v5p chip has 95 GiB.
- `1.5b` (2+ GPUs) and `0.5b` (the default, one GPU): smaller students for a first run, with a smaller
  batch (64 prompts) and 1024 + 1024 tokens; the other hyperparameters are the paper's.
`model.path` is where the downloaded Hugging Face checkpoint lives (GADJAX_MODEL_DIR); the config.json
fields are also written below (`model.random_init.hf_config`) so shapes are known without the files.
The stage is not set: the launch line says which (warmup, gad with init_from, or seqkd).
"""

import importlib.util
import os

from gadjax.config import base_config

_QWEN25 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_qwen25.py")
_spec = importlib.util.spec_from_file_location("gadjax_configs_qwen25_for_gpu", _QWEN25)
_qwen25 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_qwen25)
QWEN25_05B_INSTRUCT = _qwen25.QWEN25_05B_INSTRUCT
QWEN25_15B_INSTRUCT = _qwen25.QWEN25_15B_INSTRUCT
QWEN25_7B_INSTRUCT = _qwen25.QWEN25_7B_INSTRUCT
MODELS = {
    "0.5b": ("Qwen2.5-0.5B-Instruct", QWEN25_05B_INSTRUCT),
    "1.5b": ("Qwen2.5-1.5B-Instruct", QWEN25_15B_INSTRUCT),
    "7b": ("Qwen2.5-7B-Instruct", QWEN25_7B_INSTRUCT),
}


def get_config():
    size = os.environ.get("GADJAX_GPU_MODEL", "0.5b").lower()
    if size not in MODELS:
        raise ValueError(f"GADJAX_GPU_MODEL={size!r}: expected one of {sorted(MODELS)}")
    name, hf = MODELS[size]
    model_dir = os.environ.get("GADJAX_MODEL_DIR", os.path.expanduser(f"~/gadjax/models/{name}"))
    data_dir = os.environ.get("GADJAX_DATA_DIR", os.path.expanduser("~/gadjax/data"))

    c = base_config()
    c.stage = ""  # set on the launch line (docs/recipe.md): warmup, then gad with init_from
    c.allow_gad_from_scratch = False  # gad without init_from is a config error here
    c.run_dir = f"runs/gpu-{size}"
    c.model.path = model_dir
    c.model.tokenizer = model_dir
    c.model.random_init.enabled = False
    c.model.random_init.hf_config = dict(hf)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"

    c.data.train = [os.path.join(data_dir, "lmsys_chat_gpt5_chat_response_train.parquet")]
    c.data.num_epochs = 1  # the warmup's budget (the paper: ~1 epoch); the gad launch line sets 2
    c.rollout.n_samples = 8
    c.rollout.temperature = 0.8
    c.optim_g.lr = 1e-6
    c.optim_d.lr = 1e-6
    c.train.d_only_steps = 10
    c.train.logprob_chunk = 256
    c.checkpoint.every = 50
    c.mesh.shape = (1, -1, 1)  # FSDP over every visible GPU
    # 0 = look the peak up from the device kind; H100 SXM dense bf16 is 989e12.
    c.peak_flops_per_device = 0.0
    if size == "7b":
        # The paper's batch and lengths, as configs/v5p.py (which fits v5p-16: 8 chips of 95 GiB) but for
        # 8 x 80 GB: twice the G micro-batches (16 would need 77.96 GiB per GPU). The plan for 8xh100 at
        # XLA_PYTHON_CLIENT_MEM_FRACTION=0.95: peak 59.21 of 75.7 GiB (the rollout), 22% headroom.
        c.data.batch_size = 256
        c.data.max_prompt_tokens = 2048
        c.data.max_response_tokens = 1536
        c.rollout.max_new_tokens = 1536
        c.rollout.prompt_buckets = (256, 512, 1024, 2048)
        c.rollout.micro_batches = 2  # two chunks of 128 prompts: one chunk's KV cache at a time
        c.train.micro_batches_g = 32  # 2048 G rows -> 64 at a time, 8 per GPU
        c.train.micro_batches_d = 32  # 8 teacher + 64 student sequences at a time
        c.plan = dict(topology="8xh100")
    else:
        # One GPU does ~1/30 of a v5p-64's work: a smaller batch and shorter sequences.
        c.data.batch_size = 64
        c.data.max_prompt_tokens = 1024
        c.data.max_response_tokens = 1024
        c.rollout.max_new_tokens = 1024
        c.rollout.prompt_buckets = (128, 256, 512, 1024)
        c.train.micro_batches_g = 16  # 512 G rows -> 32 at a time
        c.train.micro_batches_d = 8
        c.plan = dict(topology="4xh100")
    return c
