"""A random tiny Qwen2-style model on a toy corpus: for tests and smoke runs on CPU (seconds per step).

python -m gadjax.train --config configs/tiny.py --config.stage=warmup --config.run_dir=runs/tiny
"""

import os

from gadjax.config import base_config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_assets")


def get_config():
    c = base_config()
    c.stage = "gad"
    c.run_dir = "runs/tiny"
    c.model.tokenizer = os.path.join(ASSETS, "tokenizer")
    c.model.random_init.enabled = True
    c.model.random_init.hf_config = dict(
        model_type="qwen2",
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=2,
    )
    c.data.train = [os.path.join(ASSETS, "train.jsonl")]
    c.data.batch_size = 8
    c.data.max_prompt_tokens = 32
    c.data.max_response_tokens = 32
    c.data.min_bucket = 16
    c.rollout.n_samples = 2
    c.rollout.max_new_tokens = 16
    c.rollout.prompt_buckets = (16, 32)
    c.optim_g.lr = 1e-3
    c.optim_d.lr = 1e-3
    c.optim_g.grad_clip_norm = 1.0
    c.optim_d.grad_clip_norm = 1.0
    c.train.steps = 4
    c.train.d_only_steps = 1
    c.train.logprob_chunk = 32
    c.checkpoint.every = 2
    # base_config's (1, -1, 1): FSDP over every device found, so the config runs as it is on a laptop's one
    # device; the tests pick their own 8-device mesh (tests/trainer/train_helpers.TEST_MESH).
    c.metrics.tensorboard = True
    c.metrics.progress = False
    return c
