"""LoRA GAD: a Qwen2.5-14B-Instruct student and discriminator on a Cloud TPU v5p slice (the paper's batch).

    python -m gadjax.plan --config configs/v5p_lora.py --topology v5p-32
    python -m gadjax.plan --config configs/v5p_lora.py:7b --topology v5p-16    # the 7B model
    # The recipe (docs/recipe.md): warmup for one epoch, then gad from it
    python -m gadjax.train --config configs/v5p_lora.py --config.stage=warmup \
        --config.run_dir=gs://BUCKET/lora/warmup
    python -m gadjax.train --config configs/v5p_lora.py --config.stage=gad \
        --config.init_from=gs://BUCKET/lora/warmup --config.data.num_epochs=2 --config.run_dir=gs://BUCKET/lora/gad

configs/v5p.py (the 7B full fine-tuning run: data, batch, hyperparameters, micro-batches, the stage left
to the launch line, gad only with init_from) with low-rank adapters of rank 64 (alpha 128) on every
attention and MLP projection of G and of D's backbone, D's scalar head trained fully, and the frozen bases
stored in bfloat16. Only the adapters (and the head) have Adam moments; the gad stage's KL reference is a
copy of the warmup adapters on G's base. `configs/v5p_lora.py:7b` (get_config("7b")) gives the same run
for the 7B model. Smallest slices (the compile-only plan, docs/recipe.md "Hardware"): 14B v5p-32 (rollout
at 98% of HBM: v5p-64 for headroom), 7B v5p-16.
The paper's learning rate 1e-6 is for full fine-tuning; LoRA usually needs ~10-100x more (1e-5 here, to
be tuned).
"""

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"gadjax_configs_{name}_for_v5p_lora", os.path.join(_HERE, name)
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_v5p, _qwen25 = _load("v5p.py"), _load("_qwen25.py")
MODELS = {"7b": _qwen25.QWEN25_7B_INSTRUCT, "14b": _qwen25.QWEN25_14B_INSTRUCT}


def get_config(size: str = "14b"):
    c = _v5p.get_config()
    c.run_dir = f"runs/v5p_lora_{size}"
    model_dir = os.environ.get(
        "GADJAX_MODEL_DIR", os.path.expanduser(f"~/gadjax/models/Qwen2.5-{size.upper()}-Instruct")
    )
    c.model.path = c.model.tokenizer = model_dir
    c.model.random_init.hf_config = dict(MODELS[size])
    for node in (c.model.lora, c.disc.lora):
        node.rank = 64
        node.alpha = 128.0
        node.targets = ("*_proj",)
    c.model.base_dtype = "bfloat16"
    c.optim_g.lr = 1e-5
    c.optim_d.lr = 1e-5
    c.plan = dict(topology="v5p-32" if size == "14b" else "v5p-16")
    return c
