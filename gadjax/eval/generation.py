"""Batched generation of the student's responses to a list of chats: greedy (SPEC.md: greedy decoding,
``temperature=0``, the default) or sampled (``temperature > 0``, optional ``top_p``) through the same
rollout sampler as training.

Prompts are rendered with the student's chat template and tokenized exactly as for training
(:class:`gadjax.data.tokenize.RowEncoder`: an over-long prompt keeps its end), sorted by length so that
each batch pads little, LEFT-padded and run through the rollout sampler. Every batch has the same size
(the last one is filled with copies of its final prompt, whose outputs are discarded), so the sampler
compiles one program per prompt bucket it meets, not one per leftover batch size. The rollout module's
Sampler cache (keyed by model structure and SamplingConfig) is used, so evaluating several checkpoints
of one model in a process, or the live student every N steps, compiles those programs once.

Lengths are in student tokens and EXCLUDE the stop token; ``truncated`` means no stop token within
``max_new_tokens``. The text is the decoded content tokens (special tokens skipped).

Sampling is reproducible: batch ``b`` (of the length-sorted order) draws with
``fold_in(key(seed), b)``, so a fixed (seed, chats, batch_size) gives the same responses in any process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from gadjax.data.batching import pad_left
from gadjax.data.tokenize import RowEncoder
from gadjax.parallel.rules import DEFAULT_RULES, Rules
from gadjax.rollout.sampler import DEFAULT_BUCKETS, SamplingConfig
from gadjax.rollout.sampler import generate as sampler_generate

# End-of-turn tokens of common chat templates; those present in the vocabulary also stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")


@dataclasses.dataclass
class GeneratedResponse:
    """One response. ``token_ids`` excludes the stop token; ``length == len(token_ids)``. ``stop_id``: the
    stop token that ended it (None when truncated), so the full sampled sequence can be rebuilt (the
    white-box metrics score the stop token too)."""

    text: str
    token_ids: list[int]
    length: int
    truncated: bool
    prompt_tokens: int
    prompt_truncated: bool
    stop_id: int | None = None


def default_stop_ids(tokenizer: Any, extra: Iterable[int] = ()) -> frozenset[int]:
    """EOS plus the end-of-turn tokens in the tokenizer's vocabulary (pad is not one of them unless it
    is one of those tokens: a pad that is a real token may not end a response)."""
    ids = {int(tokenizer.eos_token_id), *(int(i) for i in extra)}
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


def generate_responses(
    model: Any,
    tokenizer: Any,
    chats: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
    stop_ids: Iterable[int] | None = None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    seed: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    progress: bool = True,
) -> list[GeneratedResponse]:
    """Responses of ``model`` (a Decoder or its (graphdef, state)) to ``chats``, in input order.

    ``temperature`` 0: greedy (``top_p`` and ``seed`` unused); > 0: sampled from softmax(logits / T)
    restricted to the ``top_p`` nucleus, batch b keyed by ``fold_in(key(seed), b)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    if not chats:
        return []
    encoder = RowEncoder(tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=1)
    encoded = [encoder.encode_prompt({"messages": list(c)}) for c in chats]
    buckets = tuple(sorted({*(b for b in DEFAULT_BUCKETS if b < max_prompt_tokens), max_prompt_tokens}))
    # Greedy keeps the exact config it always had: the Sampler cache (keyed by it) is shared with
    # earlier greedy evaluations in the process.
    decoding: dict[str, Any] = (
        {"greedy": True} if temperature == 0 else {"temperature": float(temperature), "top_p": float(top_p)}
    )
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        stop_ids=frozenset(stop_ids) if stop_ids is not None else default_stop_ids(tokenizer),
        pad_id=int(tokenizer.pad_token_id),
        prompt_buckets=buckets,
        **decoding,
    )
    model = model if isinstance(model, tuple) else nnx.split(model)
    order = sorted(range(len(chats)), key=lambda i: len(encoded[i]["prompt_ids"]))
    out: list[GeneratedResponse | None] = [None] * len(chats)
    rng = jax.random.key(seed)  # greedy: the key is unused by the sampling rule, but required
    bar = tqdm(total=len(chats), desc="generate", unit="prompt", disable=not progress, leave=False)
    for batch_index, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        rows = idx + [idx[-1]] * (batch_size - len(idx))  # fixed batch size: one program per bucket
        seqs = [encoded[i]["prompt_ids"] for i in rows]
        ids, mask = pad_left(seqs, max(len(s) for s in seqs), cfg.pad_id)
        key = jax.random.fold_in(rng, batch_index)
        res = sampler_generate(model, ids, mask, cfg, key, mesh=mesh, rules=rules)
        for j, i in enumerate(idx):
            n = int(res.response_lengths[j])
            trunc = bool(res.truncated[j])
            content = [int(t) for t in res.response_ids[j, : n if trunc else n - 1]]
            out[i] = GeneratedResponse(
                text=tokenizer.decode(content, skip_special_tokens=True),
                token_ids=content,
                length=len(content),
                truncated=trunc,
                prompt_tokens=len(encoded[i]["prompt_ids"]),
                prompt_truncated=bool(encoded[i]["prompt_truncated"]),
                stop_id=None if trunc else int(res.response_ids[j, n - 1]),
            )
        bar.update(len(idx))
    bar.close()
    return [o for o in out if o is not None]
