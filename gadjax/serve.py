"""OpenAI-compatible HTTP server for any gadjax-loadable checkpoint (HF directory or .gguf), issue 4.

    python -m gadjax.serve --model PATH [--tokenizer PATH] [--host 127.0.0.1] [--port 8000]
        [--system-prompt TEXT] [--api-key-env NAME] [--max-batch 8] [--batch-wait-ms 10]
        [--max-new-tokens 512] [--max-prompt-tokens N] [--dtype float32|bfloat16]
        [--served-model-name NAME] [--ready-file PATH] [--seed N] [--log-level info]
        [--batching continuous|static] [--chunk-steps 8]

When it is ready it prints exactly one line to stdout (flushed):

    gadjax.serve listening on http://HOST:PORT/v1 (model NAME)

so a script can wait for the regex ``listening on (\\S+) \\(model (.*)\\)$``; ``--port 0`` picks a free
port. ``--ready-file PATH`` also writes the base URL (one line) to PATH, atomically. SIGTERM / SIGINT
stop it cleanly (exit status 0).

Behaviour (details in gadjax/serving/): with ``--batching continuous`` (the default) requests join and
leave ``--max-batch`` running decode slots between chunks of ``--chunk-steps`` steps, so a short request
never waits for a long one (continuous.py); ``--batching static`` batches concurrent requests through the
rollout sampler, each batch running until its longest member ends (engine.py). ``stream=true`` answers
with a server-sent-event stream (chunked): with continuous batching a content delta per decode chunk as the
tokens are produced, decoded incrementally so multi-byte characters are never split, the deltas adding up
to the non-streaming text (streaming.py); with static batching one delta per choice once its batch ends.
The hidden ``--system-prompt`` is prepended to every conversation and, when the client sends its own
leading system message, both go in ONE system message, the hidden text first
(protocol.with_hidden_system_prompt). The client never sees the hidden prompt,
but it is counted in ``usage.prompt_tokens``. ``--api-key-env NAME`` reads the bearer token from the
environment variable NAME; it is never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

READY_PREFIX = "gadjax.serve listening on"
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gadjax.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint directory or .gguf file")
    p.add_argument("--tokenizer", help="tokenizer directory or .gguf (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 = pick a free port (printed in the ready line)")
    p.add_argument("--system-prompt", help="hidden system prompt prepended to every conversation")
    p.add_argument("--api-key-env", help="NAME of the environment variable holding the bearer token")
    p.add_argument(
        "--batching",
        choices=("continuous", "static"),
        default="continuous",
        help="continuous: requests join and leave running decode slots; static: batches run to their end",
    )
    p.add_argument("--max-batch", type=int, default=8, help="most rows (choices) decoded together")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="static: how long to gather a batch")
    p.add_argument("--chunk-steps", type=int, default=8, help="continuous: decode steps between admissions")
    p.add_argument("--max-new-tokens", type=int, default=512, help="largest max_tokens a request may ask")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        help="longest prompt accepted (default: model max positions - max-new-tokens, <= 4096)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument(
        "--mesh",
        default="auto",
        help="data,fsdp,tensor mesh over this host's devices, e.g. 1,1,-1 (tensor parallel over all); "
        "auto (default): 1,1,-1 on GPU / TPU, one device on CPU",
    )
    p.add_argument("--served-model-name", help="model id reported by /v1/models (default: file name)")
    p.add_argument("--ready-file", help="write the base URL here once listening")
    p.add_argument("--seed", type=int, help="base random seed for requests without one")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def default_model_name(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def eos_ids_for(tokenizer: object, model_eos: Sequence[int], vocab_size: int) -> set[int]:
    """Tokens that end a turn: the tokenizer's eos, the checkpoint's eos ids, and common end-of-turn
    tokens present in the vocabulary (chat templates often end a turn with one that is not `eos`)."""
    ids = {int(tokenizer.eos_token_id)} | {int(e) for e in model_eos}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_TOKENS if t in vocab}
    return {i for i in ids if 0 <= i < vocab_size}


def _write_ready_file(path: str, url: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


PROG = "gadjax.serve"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM / SIGINT. Bad arguments and unreadable inputs: one line on stderr, exit 2."""
    from gadjax import cli

    cli.quiet_tpu_start()
    args = cli.one_line_errors(_parser(), PROG).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("gadjax.serve")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            return cli.report(
                PROG, f"environment variable {args.api_key_env} (--api-key-env) is not set or empty"
            )
    for name in ("max_batch", "max_new_tokens", "chunk_steps"):
        if getattr(args, name) < 1:
            return cli.report(PROG, f"--{name.replace('_', '-')} must be >= 1")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        return cli.report(PROG, "--max-prompt-tokens must be >= 1")
    if not 0 <= args.port <= 65535:
        return cli.report(PROG, f"--port must be in [0, 65535] (got {args.port})")
    try:
        cli.require_paths(("--model", args.model), ("--tokenizer", args.tokenizer))
    except cli.InputError as e:
        return cli.report(PROG, e)

    import jax.numpy as jnp  # after argument checks: importing jax takes seconds

    from gadjax.models.hf_io import load_decoder
    from gadjax.models.tokenizer import load_tokenizer
    from gadjax.parallel.mesh import local_mesh, parse_mesh_flag
    from gadjax.serving.continuous import ContinuousEngine
    from gadjax.serving.engine import Engine
    from gadjax.serving.http import ChatService, make_server

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    try:
        with cli.input_errors("--mesh"):
            mesh = local_mesh(parse_mesh_flag(args.mesh))
        tokenizer_path = args.tokenizer or args.model
        with cli.input_errors(f"{'--tokenizer' if args.tokenizer else '--model'} {tokenizer_path}"):
            tokenizer = load_tokenizer(tokenizer_path)
        with cli.input_errors(f"--model {args.model}"):
            model = load_decoder(args.model, dtype=dtype, param_dtype=dtype, mesh=mesh)
    except cli.InputError as e:
        return cli.report(PROG, e)
    cfg = model.config
    max_prompt = args.max_prompt_tokens or max(
        32, min(4096, cfg.max_position_embeddings - args.max_new_tokens)
    )
    common = dict(
        eos_ids=eos_ids_for(tokenizer, cfg.eos_token_ids, cfg.vocab_size),
        pad_id=tokenizer.pad_token_id,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=max_prompt,
        seed=args.seed,
    )
    if args.batching == "continuous":
        engine = ContinuousEngine(model, chunk_steps=args.chunk_steps, **common)
    else:
        engine = Engine(model, mesh=mesh, **common)
    name = args.served_model_name or default_model_name(args.model)
    service = ChatService(engine, tokenizer, name, system_prompt=args.system_prompt, api_key=api_key)
    try:
        httpd = make_server(service, args.host, args.port)
    except OSError as e:  # address in use, cannot bind
        engine.close()
        return cli.report(PROG, f"cannot listen on {args.host}:{args.port}: {e}")
    host, port = httpd.server_address[:2]
    url = f"http://{host}:{port}/v1"

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=httpd.shutdown, daemon=True).start()  # shutdown() blocks; not here

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "model %s: %d layers, hidden %d, vocab %d, %s; eos ids %s; %s batching, max batch %d, prompt <= %d, "
        "new tokens <= %d; auth %s; hidden system prompt %s",
        args.model,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        args.dtype,
        sorted(engine.eos_ids),
        args.batching,
        args.max_batch,
        max_prompt,
        args.max_new_tokens,
        "on" if api_key else "off",
        "on" if args.system_prompt else "off",
    )
    if args.ready_file:
        _write_ready_file(args.ready_file, url)
    print(f"{READY_PREFIX} {url} (model {name})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        engine.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    from gadjax.cli import run_main

    sys.exit(run_main(PROG, main))
