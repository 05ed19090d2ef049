"""Model shapes the benchmarks share (HF LlamaConfig keyword arguments; random init, no download)."""

# SmolLM2-135M(-Instruct): the embedded model's shape (DESIGN.md).
SMOLLM2 = dict(
    model_type="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)

TINY = dict(
    model_type="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)


def llama_kwargs(shape: dict) -> dict:
    """The shape as LlamaConfig(**kwargs) arguments (model_type is the class's, not an argument)."""
    return {k: v for k, v in shape.items() if k != "model_type"}
