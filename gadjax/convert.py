"""Checkpoint conversion: `python -m gadjax.convert SRC DST [--discriminator] [--tokenizer PATH]`.

SRC: a Hugging Face directory (config.json + safetensors) or a GGUF file (llama / qwen2 / qwen3;
dequantized, llama Q/K permutation undone). DST: a Hugging Face directory (config.json, safetensors,
generation_config.json, tokenizer files) that transformers loads. With --discriminator the source is
read as a GAD discriminator (backbone + a fresh score head unless SRC has one) and written as
*ForSequenceClassification.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gadjax.models.hf_io import CheckpointError, load_decoder, load_discriminator, save_hf_checkpoint
from gadjax.models.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gadjax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="HF directory or .gguf file")
    p.add_argument("dst", help="output HF directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer source (default: SRC)")
    p.add_argument("--discriminator", action="store_true", help="write a discriminator (sequence classifier)")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_discriminator(args.src) if args.discriminator else load_decoder(args.src)
        tokenizer = load_tokenizer(args.tokenizer or args.src, require_chat_template=False)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"gadjax.convert: {e}", file=sys.stderr)
        return 2
    save_hf_checkpoint(
        model, args.dst, tokenizer=tokenizer, max_shard_bytes=int(args.max_shard_gb * (1 << 30))
    )
    cfg = model.config
    print(
        f"wrote {args.dst}: {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.param_count() / 1e6:.1f}M parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
