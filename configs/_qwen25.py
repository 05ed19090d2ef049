"""Qwen2.5-Instruct config.json fields (the ones gadjax reads, values as published), shared by
configs/gpu.py (0.5B, 1.5B) and configs/v5p.py (7B). Not a config itself (no `get_config`): configs/ is
not a package, so those files load this one by path with importlib (as configs/study.py loads demo.py).
"""

# Qwen/Qwen2.5-0.5B-Instruct config.json.
QWEN25_05B_INSTRUCT = dict(
    architectures=["Qwen2ForCausalLM"],
    model_type="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    hidden_act="silu",
    bos_token_id=151643,
    eos_token_id=151645,
    torch_dtype="bfloat16",
)
# Qwen/Qwen2.5-1.5B-Instruct: the 0.5B's fields but these.
QWEN25_15B_INSTRUCT = dict(
    QWEN25_05B_INSTRUCT,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
)
# Qwen/Qwen2.5-7B-Instruct: the 0.5B's fields but these (a larger vocabulary, untied embeddings).
QWEN25_7B_INSTRUCT = dict(
    QWEN25_05B_INSTRUCT,
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
# Qwen/Qwen2.5-14B-Instruct: the 7B's fields but these.
QWEN25_14B_INSTRUCT = dict(
    QWEN25_7B_INSTRUCT,
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=48,
    num_attention_heads=40,
    num_key_value_heads=8,
)
