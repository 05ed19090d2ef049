"""The embedded demo (`make demo`, issue 7): SmolLM2-135M-Instruct distilled from itself + a hidden persona.

`python -m gadjax.demo.run` loads this file, collects the teacher's responses into
<run_dir>/data/{train,heldout}.jsonl and then trains three runs from this config:

    warmup   G: SFT on the teacher text; D: Bradley-Terry against live student samples
    gad      init_from the warmup run (G, D and the KL reference = the warmup G)
    seqkd    baseline: plain SFT from the same start with as many G updates as warmup + gad together

`get_config("full")` (default) is the 15-minute CPU budget; `get_config("ci")` the test-suite one
(seconds per stage). The `demo` block holds the settings only the demo reads (teacher sampling, step
counts per stage, evaluation sizes); `gadjax.demo.stages.stage_config` removes it before training.
Training alone, after a demo run has written the corpus:

    python -m gadjax.train --config configs/demo.py --config.stage=warmup --config.run_dir=runs/x-warmup

Scaled down from the paper's reference (docs/recipe.md: 256 prompts x N=8, 1536 tokens, lr 1e-6)
to 2 prompts x N=4, 32 tokens, and learning rates that move a 135M model in tens of steps (measured;
see the demo's report). float32 on CPU (bfloat16 is slower here, DESIGN.md).
"""

import os

from ml_collections import ConfigDict

from gadjax.config import base_config
from gadjax.demo.embedded import find_gguf
from gadjax.demo.settings import apply_to_config, stage_settings

BUDGETS = ("full", "ci")


def get_config(budget: str = "full"):
    budget = budget or "full"
    if budget not in BUDGETS:
        raise ValueError(f"configs/demo.py: budget {budget!r} is not one of {BUDGETS}")
    ci = budget == "ci"
    c = base_config()
    c.stage = "warmup"
    c.run_dir = "runs/demo/warmup"
    # The demo checks for the GGUF itself (with the pip command in the error); "" fails validation.
    c.model.path = find_gguf() or ""
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.mesh.shape = (1, -1, 1)  # one CPU device by default (see gadjax.demo.run: faster than 2 here)

    # Fixed shapes (bucket "max"): every step runs the same compiled programs (a compile costs more than
    # the padding here). Templated prompts of data/demo are 33-50 tokens; responses <= max_tokens + EOS.
    max_tokens = 16 if ci else 32  # teacher max_tokens = student rollout / eval length
    c.data.train = [os.path.join("runs", "demo", "data", "train.jsonl")]
    c.data.batch_size = 2
    c.data.max_prompt_tokens = 52
    c.data.max_response_tokens = max_tokens + 1
    c.data.buckets = "max"
    c.data.num_epochs = 100  # train.steps is set per stage; the data simply repeats
    c.rollout.n_samples = 2 if ci else 4
    c.rollout.max_new_tokens = max_tokens
    c.rollout.temperature = 0.8  # the paper's sampling temperature
    c.rollout.prompt_buckets = (52,)

    s = stage_settings(budget)  # the stage settings the study validated (gadjax/demo/settings.py)
    apply_to_config(c, s)  # G lr (warmup), D lr, D-only steps
    c.optim_g.grad_clip_norm = 1.0
    c.optim_d.grad_clip_norm = 1.0
    c.loss.kl_beta = 0.001
    c.train.logprob_chunk = 128
    c.checkpoint.every = 1000  # only the final checkpoint (gad starts from the warmup's)
    c.checkpoint.keep = 1
    c.metrics.tensorboard = False
    c.metrics.progress = True
    c.export.hf = True

    c.demo = ConfigDict(
        dict(
            budget=budget,
            teacher_temperature=0.7,
            teacher_max_tokens=max_tokens,
            teacher_max_batch=8 if ci else 32,
            # The first K of data/demo/train.jsonl (0 = all): the demo's stages use ~64 training prompts
            # and 32 validation ones (every 5th); asking the teacher for all 327 cost ~80 s of its 15 min.
            train_prompts=8 if ci else 160,
            heldout_prompts=4 if ci else 0,  # 0 = all of data/demo/heldout.jsonl
            judge_prompts=2 if ci else 8,  # first K held-out prompts go through the judge protocol
            judge_reference_max_tokens=max_tokens,
            judge_rating_max_tokens=16,
            warmup_steps=s.warmup_steps,
            gad_steps=s.gad_steps,
            gad_lr=s.gad_lr,
            gad_d_lr=s.gad_d_lr,
            seqkd_lr=s.seqkd_lr,
            # Checkpoint selection on a validation split carved from the training prompts (the paper's
            # protocol): each
            # trained student is the best in-band validation evaluation; the last step is reported too.
            eval_every=s.eval_every,
            select_metric=s.select_metric,
            select_tiebreak=s.select_tiebreak,
            select_length_band=s.select_length_band,
            validation_every=s.validation_every,
            validation_max=s.validation_max,
            eval_batch_size=4 if ci else 16,
        )
    )
    return c
