"""GAD on one or more NVIDIA GPUs (80 GB class), bf16 compute, f32 master weights.

    pip install -e '.[cuda]'
    python -m gadjax.train --config configs/gpu.py --config.stage=warmup --config.run_dir=runs/gpu
    GADJAX_GPU_MODEL=1.5b python -m gadjax.train --config configs/gpu.py ...   # 2+ GPUs

Student and discriminator: Qwen2.5-0.5B-Instruct by default (GADJAX_GPU_MODEL=1.5b for Qwen2.5-1.5B-Instruct).
`model.path` is where the downloaded Hugging Face checkpoint lives (GADJAX_MODEL_DIR); the config.json
fields are also written below (`model.random_init.hf_config`) so shapes are known without the files.

Memory on ONE 80 GB GPU (everything resident: G and D params + Adam moments in f32, the f32 reference):
0.5B ~ 4 x 0.5B x 4 B x 2 models + 2 GB = ~18 GB of state, leaving room for the KV cache of 64 x 8
rollouts of 1024 + 1024 tokens (~6 GB in bf16) and micro-batched activations. 1.5B has ~56 GB of state:
use 2+ GPUs, where the mesh's fsdp axis (-1) shards it over all of them.
Prompts per step are scaled down from SPEC.md's 256 (one GPU does ~1/30 of a v5p-64's work); the other
SPEC.md hyperparameters (N = 8, lr 1e-6, clip 0.2, KL 0.001, temperature 0.8) are unchanged.
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
MODELS = {
    "0.5b": ("Qwen2.5-0.5B-Instruct", QWEN25_05B_INSTRUCT),
    "1.5b": ("Qwen2.5-1.5B-Instruct", QWEN25_15B_INSTRUCT),
}


def get_config():
    size = os.environ.get("GADJAX_GPU_MODEL", "0.5b").lower()
    if size not in MODELS:
        raise ValueError(f"GADJAX_GPU_MODEL={size!r}: expected one of {sorted(MODELS)}")
    name, hf = MODELS[size]
    model_dir = os.environ.get("GADJAX_MODEL_DIR", os.path.expanduser(f"~/gadjax/models/{name}"))
    data_dir = os.environ.get("GADJAX_DATA_DIR", os.path.expanduser("~/gadjax/data"))

    c = base_config()
    c.stage = "gad"
    c.run_dir = f"runs/gpu-{size}"
    c.model.path = model_dir
    c.model.tokenizer = model_dir
    c.model.random_init.enabled = False
    c.model.random_init.hf_config = dict(hf)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"

    c.data.train = [os.path.join(data_dir, "lmsys_chat_gpt5_chat_response_train.parquet")]
    c.data.batch_size = 64
    c.data.max_prompt_tokens = 1024
    c.data.max_response_tokens = 1024
    c.rollout.n_samples = 8
    c.rollout.temperature = 0.8
    c.rollout.max_new_tokens = 1024
    c.rollout.prompt_buckets = (128, 256, 512, 1024)
    c.optim_g.lr = 1e-6
    c.optim_d.lr = 1e-6

    c.mesh.shape = (1, -1, 1)  # FSDP over every visible GPU
    c.train.micro_batches_g = 16  # 512 G rows -> 32 at a time
    c.train.micro_batches_d = 8
    c.train.logprob_chunk = 256
    # 0 = look the peak up from the device kind; H100 SXM dense bf16 is 989e12.
    c.peak_flops_per_device = 0.0
    return c
