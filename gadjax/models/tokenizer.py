"""Tokenizer + chat template from a Hugging Face directory or rebuilt from GGUF metadata.

`load_tokenizer(path)` is the one entry point the rest of gadjax uses (see HELPERS.md "Shared contracts"):
it returns a `transformers.PreTrainedTokenizerFast` with ``chat_template``, ``eos_token_id`` and
``pad_token_id`` set (pad falls back to eos).

A GGUF file carries no ``tokenizer.json``; it stores llama.cpp's description of one: the token strings,
their types (normal / control / user-defined), BPE merges, special token ids, a pre-tokenizer name and
the chat template. For llama.cpp's ``gpt2`` tokenizer model (byte-level BPE: Llama 3, SmolLM2, Qwen2/3)
we rebuild the equivalent `tokenizers.Tokenizer` directly; transformers' own GGUF conversion needs torch
and serves only as the reference in tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from gadjax.models.gguf import gguf_field, read_gguf
from gadjax.paths import localize

# llama.cpp token types (gguf TokenType): only these two become added tokens matched whole in the text.
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split regexes by llama.cpp's ``tokenizer.ggml.pre`` name (llama-vocab.cpp). These are the
# patterns of the original Hugging Face tokenizers the files were converted from.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PRE = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Llama 3's tokenizer.json sets BPE ignore_merges (a word that is itself a token is not re-merged);
# llama.cpp does the same for these pre-tokenizer types.
_IGNORE_MERGES_PRE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe"}
# GPT-2's own regex (ByteLevel use_regex=True), optionally preceded by splitting every digit.
_GPT2_PRE = {"default", "gpt2", "gpt-2"}
_DIGITS_GPT2_PRE = {"smollm"}

_HF_FILES = ("tokenizer.json", "tokenizer_config.json")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _pre_tokenizer(path: str, pre: str | None, add_prefix_space: bool) -> pre_tokenizers.PreTokenizer:
    pre = pre or "default"
    if pre in _SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_PRE[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    if pre in _GPT2_PRE:
        return byte_level
    if pre in _DIGITS_GPT2_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    known = sorted({*_SPLIT_PRE, *_GPT2_PRE, *_DIGITS_GPT2_PRE})
    raise ValueError(f"{path}: unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre); known: {known}")


def _token_id_name(reader: GGUFReader, tokens: Sequence[str], key: str) -> str | None:
    token_id = gguf_field(reader, f"tokenizer.ggml.{key}_token_id")
    return None if token_id is None else tokens[int(token_id)]


def tokenizer_from_gguf(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Rebuild the byte-level BPE tokenizer (llama.cpp model ``gpt2``) a GGUF file describes.

    Control tokens become special added tokens, user-defined ones plain added tokens, both with their file
    ids; bos / eos / unk / pad come from ``tokenizer.ggml.*_token_id`` (pad falls back to eos) and the chat
    template from ``tokenizer.chat_template``. Raises ValueError naming the file for anything it cannot
    reproduce faithfully (another tokenizer model, an unknown pre-tokenizer, duplicate token strings).
    """
    path = os.fspath(path)
    reader = read_gguf(path)
    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model); only byte-level BPE "
            "'gpt2' (Llama 3, SmolLM2, Qwen) is supported"
        )
    tokens: list[str] = gguf_field(reader, "tokenizer.ggml.tokens")
    types: list[int] = gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges: list[str] | None = gguf_field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(tokens)} tokens but {len(types)} token types")

    # Normal tokens are spelled in the byte alphabet; respell any that are not (as transformers does).
    # Control / user-defined tokens keep their raw text: they are matched whole, before byte-level encoding.
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for index, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type not in (_CONTROL, _USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        if token in vocab:
            raise ValueError(f"{path}: token {token!r} appears twice (ids {vocab[token]} and {index})")
        vocab[token] = index

    pre = gguf_field(reader, "tokenizer.ggml.pre")
    add_prefix_space = bool(gguf_field(reader, "tokenizer.ggml.add_space_prefix", False))
    bpe = models.BPE(
        vocab=vocab,
        merges=[tuple(m.split(" ", 1)) for m in merges],
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=pre in _IGNORE_MERGES_PRE,
    )
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = _pre_tokenizer(path, pre, add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    # Adding an existing vocab entry reuses its id, so ids stay those of the file.
    typed = list(zip(tokens, types, strict=True))
    control = [AddedToken(t, normalized=False, special=True) for t, k in typed if k == _CONTROL]
    user = [AddedToken(t, normalized=False, special=False) for t, k in typed if k == _USER_DEFINED]
    backend.add_special_tokens(control)
    backend.add_tokens(user)
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        size = backend.get_vocab_size(with_added_tokens=True)
        raise ValueError(f"{path}: rebuilt tokenizer has {size} ids, the file has {len(tokens)}")

    bos = _token_id_name(reader, tokens, "bos")
    eos = _token_id_name(reader, tokens, "eos")
    add_bos = bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(gguf_field(reader, "tokenizer.ggml.add_eos_token", False))
    for flag, name, token in ((add_bos, "bos", bos), (add_eos, "eos", eos)):
        if flag and token is None:
            raise ValueError(f"{path}: tokenizer.ggml.add_{name}_token is set but no {name} token id is")
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    specials = [(bos, vocab[bos])] * add_bos + [(eos, vocab[eos])] * add_eos
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)

    context = gguf_field(reader, f"{gguf_field(reader, 'general.architecture')}.context_length")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=_token_id_name(reader, tokens, "unknown"),
        pad_token=_token_id_name(reader, tokens, "padding") or eos,
        chat_template=gguf_field(reader, "tokenizer.chat_template"),
        model_max_length=int(context) if context else int(1e30),
        clean_up_tokenization_spaces=False,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
    )
    return tokenizer


def _find_gguf(directory: str) -> str | None:
    ggufs = sorted(f for f in os.listdir(directory) if f.endswith(".gguf"))
    if len(ggufs) > 1:
        raise ValueError(f"{directory}: no tokenizer files and several .gguf files {ggufs}; pass one of them")
    return os.path.join(directory, ggufs[0]) if ggufs else None


def load_tokenizer(path: str | os.PathLike, require_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Load the tokenizer of a Hugging Face directory or a ``.gguf`` file (rebuilt from its metadata).

    A directory without tokenizer files but with exactly one ``.gguf`` uses that file. The result always has
    ``eos_token_id`` and ``pad_token_id`` (pad falls back to eos) and, unless ``require_chat_template`` is
    False, a ``chat_template``; a missing one raises ValueError naming the path.
    """
    path = localize(path)  # gs:// -> a local copy (transformers reads local files)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _HF_FILES):
        path = _find_gguf(path) or path
    if os.path.isfile(path) and path.endswith(".gguf"):
        tokenizer = tokenizer_from_gguf(path)
    elif os.path.isdir(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            kind = type(tokenizer).__name__
            raise ValueError(f"{path}: expected a fast (tokenizers) tokenizer, got {kind}")
    else:
        raise FileNotFoundError(f"tokenizer source is neither a directory nor a .gguf file: {path}")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{path}: tokenizer has no eos token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if require_chat_template and not tokenizer.chat_template:
        raise ValueError(f"{path}: tokenizer has no chat template (require_chat_template=False allows that)")
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json (chat template inline) and special_tokens_map.json.

    The result loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)``. Returns the paths written.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    # Inline chat template (not chat_template.jinja) so older readers of tokenizer_config.json find it.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    config_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    special_path = os.path.join(out_dir, "special_tokens_map.json")
    with open(special_path, "w", encoding="utf-8") as f:
        json.dump(tokenizer.special_tokens_map, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return [os.path.join(out_dir, "tokenizer.json"), config_path, special_path]
