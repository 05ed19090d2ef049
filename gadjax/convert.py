"""Checkpoint conversion: `python -m gadjax.convert SRC DST [--discriminator] [--tokenizer PATH] [--dtype D]`.

SRC: a Hugging Face directory (config.json + safetensors) or a GGUF file (llama / qwen2 / qwen3;
dequantized, llama Q/K permutation undone). DST: a Hugging Face directory (config.json, safetensors,
generation_config.json, tokenizer files) that transformers loads. With --discriminator the source is
read as a GAD discriminator (backbone + a fresh score head unless SRC has one) and written as
*ForSequenceClassification. --dtype bfloat16|float16|float32 sets the weights' dtype on disk (default:
SRC's own torch_dtype); config.json carries it as torch_dtype.

With --adapter DIR (a PEFT LoRA directory, e.g. a LoRA run's export/student_adapter) the adapter is
merged into SRC's weights: W + (lora_alpha / r) * B A, written as a plain HF checkpoint.

The tokenizer comes from --tokenizer (a HF directory or .gguf) or else SRC. A SRC directory without
tokenizer files (the model alone, as `save_pretrained` writes intermediate checkpoints) still converts:
the weights are written, with a warning that DST has no tokenizer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gadjax.paths import localize

PROG = "gadjax.convert"
log = logging.getLogger(PROG)

# Any of these (or a .gguf) in a directory means it carries a tokenizer that transformers / gadjax reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str) -> bool:
    """Whether `path` (a .gguf file or a HF directory) carries a tokenizer.

    transformers would otherwise build a tokenizer from config.json alone: an error for Llama and, for
    Qwen2 / Qwen3, an empty one-token tokenizer that must not be written out.
    """
    path = localize(path)  # gs:// -> this host's copy (downloaded once)
    if not os.path.isdir(path):
        return path.endswith(".gguf")
    files = os.listdir(path)
    return any(f in files for f in TOKENIZER_FILES) or any(f.endswith(".gguf") for f in files)


def main(argv: list[str] | None = None) -> int:
    """Convert SRC to DST; bad arguments and unreadable inputs are one line on stderr, exit status 2."""
    from gadjax import cli

    cli.quiet_tpu_start()
    p = argparse.ArgumentParser(prog="python -m gadjax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="HF directory or .gguf file")
    p.add_argument("dst", help="output HF directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer source: HF directory or .gguf (default: SRC)")
    p.add_argument("--discriminator", action="store_true", help="write a discriminator (sequence classifier)")
    p.add_argument("--adapter", default=None, help="PEFT LoRA directory to merge into SRC's weights")
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="weight dtype written to DST (default: SRC's own torch_dtype; float32 for a GGUF)",
    )
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size")
    args = cli.one_line_errors(p, PROG).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.require_paths(("SRC", args.src), ("--tokenizer", args.tokenizer), ("--adapter", args.adapter))
        if args.adapter is not None and args.discriminator:
            raise cli.InputError("--adapter merges a causal-LM adapter; drop --discriminator")
        if args.max_shard_gb <= 0:
            raise cli.InputError(f"--max-shard-gb must be > 0 (got {args.max_shard_gb})")
        tok_src = args.tokenizer or args.src
        if args.tokenizer is not None and not has_tokenizer(args.tokenizer):
            files = ", ".join(TOKENIZER_FILES)
            raise cli.InputError(f"--tokenizer {args.tokenizer}: no tokenizer files ({files} or a .gguf)")

        # After the argument checks: importing jax takes seconds.
        from gadjax.models.hf_export import save_hf_checkpoint
        from gadjax.models.hf_io import load_decoder, load_discriminator
        from gadjax.models.tokenizer import load_tokenizer

        with cli.input_errors(f"SRC {args.src}"):
            model = load_discriminator(args.src) if args.discriminator else load_decoder(args.src)
        if args.adapter is not None:
            from gadjax.models.peft_io import merge_peft_adapter

            with cli.input_errors(f"--adapter {args.adapter}"):
                merge_peft_adapter(model, args.adapter)
        tokenizer = None
        if has_tokenizer(tok_src):
            with cli.input_errors(f"{'--tokenizer' if args.tokenizer else 'SRC'} {tok_src}"):
                tokenizer = load_tokenizer(tok_src, require_chat_template=False)
        else:
            log.warning(
                "no tokenizer found in %s (none of %s); none written to %s: pass --tokenizer PATH to add one",
                args.src,
                ", ".join(TOKENIZER_FILES),
                args.dst,
            )
    except cli.InputError as e:
        return cli.report(PROG, e)
    cfg = model.config
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        log.warning(
            "the tokenizer has %d tokens, the model's vocabulary %d: is %s the model's tokenizer?",
            len(tokenizer),
            cfg.vocab_size,
            tok_src,
        )
    dtype = args.dtype or cfg.source_dtype
    save_hf_checkpoint(
        model, args.dst, tokenizer=tokenizer, max_shard_bytes=int(args.max_shard_gb * (1 << 30)), dtype=dtype
    )
    print(
        f"wrote {args.dst}: {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.param_count() / 1e6:.1f}M parameters, {dtype}"
        + ("" if tokenizer is not None else ", no tokenizer")
    )
    return 0


if __name__ == "__main__":
    from gadjax.cli import run_main

    sys.exit(run_main(PROG, main))
