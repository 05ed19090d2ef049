"""White-box distribution diagnostics: token-level comparisons that need the TEACHER's weights.

Evaluation only. GAD's teacher is a black box (an API: text out, no log-probs), so training never sees
these numbers; on a setup where the teacher is a local model (the persona demo, or any open-weight
teacher sharing the student's tokenizer) they measure directly what the text metrics only approximate:

- ``reverse_kl``: KL(student || teacher) per token, estimated on the student's OWN samples y ~ p_s:
  mean over response tokens of log p_s(y_t | x, y_<t) - log p_t(y_t | x_teacher, y_<t). The teacher
  sees the conversation with its hidden system prompt (gadjax.data.chat: merged), the student
  without: the question is whether the student behaves like the teacher-with-persona. Both
  distributions are taken at the temperature the samples were drawn at (softmax(logits / T)); the
  estimate is unbiased for the sequence KL only when the samples come from exactly that distribution
  (T > 0, top_p = 1). A response that ended with a stop token includes it (stopping is behaviour too).
- ``teacher_nll``: the student's per-token negative log-likelihood of the teacher's responses at T=1
  (what seqkd minimises), the teacher responses tokenized as for training (EOS appended unless cut).

Both are computed with gadjax's own forward (:func:`gadjax.algo.steps.sequence_logprobs`) on prompts
rendered with the chat template exactly as for training (:class:`gadjax.data.tokenize.RowEncoder`).
Reported as a mean over prompts of each prompt's token-mean, with the standard error over prompts.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gadjax.algo.steps import sequence_logprobs
from gadjax.data.batching import pad_left, pad_right
from gadjax.data.chat import with_hidden_system_prompt
from gadjax.data.tokenize import RowEncoder
from gadjax.parallel.rules import DEFAULT_RULES, Rules, use_mesh

Chat = Sequence[Mapping[str, str]]


def teacher_view(messages: Chat, system_prompt: str | None) -> list[dict[str, str]]:
    """The teacher's view of a conversation: gadjax's one rule for a hidden system prompt (first, merged
    with the conversation's own leading system message into one; gadjax.data.chat); unchanged when
    ``system_prompt`` is None."""
    return with_hidden_system_prompt(messages, system_prompt)


def _bucket(n: int) -> int:
    """Padded length: the next power of two >= n (>= 8), so a run compiles few shapes."""
    return max(8, 1 << max(0, n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "chunk_size"))
def _logprobs(
    graphdef, state, prompt_ids, prompt_mask, response_ids, response_mask, *, temperature, chunk_size
):
    model = nnx.merge(graphdef, state)
    logp, _ = sequence_logprobs(
        model,
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        chunk_size=chunk_size,
        temperature=temperature,
    )
    return logp * response_mask


def response_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> list[np.ndarray]:
    """Per-token log p(response_t | prompt, response_<t) under softmax(logits / temperature) of ``model``
    (a Decoder or its (graphdef, state)), one float32 array per row (len = len(response)).

    Rows are sorted by length and padded to power-of-two buckets (prompt LEFT, response RIGHT) in
    batches of a fixed size, so a run compiles a handful of programs. With ``mesh``, the model's
    logical-axis constraints apply (as in the rollout sampler)."""
    if len(prompts) != len(responses):
        raise ValueError(f"response_logprobs: {len(prompts)} prompts but {len(responses)} responses")
    if not temperature > 0:
        raise ValueError(f"response_logprobs: temperature={temperature}, must be > 0")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("response_logprobs: empty prompt (the first response token needs a context)")
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    out: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(prompts)
    todo = sorted((i for i in range(len(prompts)) if len(responses[i])), key=lambda i: len(responses[i]))
    with use_mesh(mesh, rules) if mesh is not None else contextlib.nullcontext():
        _score_batches(graphdef, state, prompts, responses, todo, out, temperature, batch_size, pad_id)
    return out


def _score_batches(graphdef, state, prompts, responses, todo, out, temperature, batch_size, pad_id) -> None:
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        rows = idx + [idx[-1]] * (batch_size - len(idx))
        p_len = _bucket(max(len(prompts[i]) for i in rows))
        r_len = _bucket(max(len(responses[i]) for i in rows))
        p_ids, p_mask = pad_left([np.asarray(prompts[i], np.int32) for i in rows], p_len, pad_id)
        r_ids, r_mask = pad_right([np.asarray(responses[i], np.int32) for i in rows], r_len, pad_id)
        logp = np.asarray(
            _logprobs(
                graphdef,
                state,
                p_ids,
                p_mask,
                r_ids,
                r_mask,
                temperature=float(temperature),
                chunk_size=min(256, r_len),
            )
        )
        for j, i in enumerate(idx):
            out[i] = logp[j, : len(responses[i])].astype(np.float32)


def token_log_ratios(
    student_model: Any,
    teacher_model: Any,
    student_prompts: Sequence[Sequence[int]],
    teacher_prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    **kw: Any,
) -> list[np.ndarray]:
    """Per-token log p_s(y_t | x_s, y_<t) - log p_t(y_t | x_t, y_<t) at ``temperature``, one array per
    row. Summed over a row: log p_s(y | x_s) - log p_t(y | x_t), whose expectation under y ~ p_s is the
    sequence KL(p_s || p_t). Keyword arguments (``temperature``, ``batch_size``, ``pad_id``, ``mesh``,
    ``rules``) and their defaults are those of :func:`response_logprobs`, which scores both sides."""
    ls = response_logprobs(student_model, student_prompts, responses, **kw)
    lt = response_logprobs(teacher_model, teacher_prompts, responses, **kw)
    return [a - b for a, b in zip(ls, lt, strict=True)]


def _mean_se(per_prompt: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample std / sqrt(n)) over prompts; se None with fewer than 2."""
    x = np.asarray(per_prompt, np.float64)
    if x.size == 0:
        return None, None
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
    return float(x.mean()), se


def _vocab_size(model: Any) -> int:
    m = nnx.merge(*model) if isinstance(model, tuple) else model
    return int(m.config.vocab_size)


def token_metrics(
    student_model: Any,
    teacher_model: Any,
    tokenizer: Any,
    chats: Sequence[Chat],
    student_token_ids: Sequence[Sequence[int]],
    teacher_texts: Sequence[str | None],
    *,
    student_stop_ids: Sequence[int | None] | None = None,
    teacher_system_prompt: str | None = None,
    temperature: float = 1.0,
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
    max_response_tokens: int = 2048,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> dict[str, Any]:
    """Reverse KL on the student's samples and the student's NLL of the teacher's responses (see the
    module docstring). Both models must share ``tokenizer``'s vocabulary.

    ``student_token_ids[k]``: the student's response to ``chats[k]`` as generated; ``student_stop_ids[k]``
    (GeneratedResponse.stop_id) is appended when not None (None = truncated, or ids already complete;
    omit the argument to use the ids as given). ``teacher_texts[k]`` None: no teacher response for that
    row (skipped in teacher_nll). Rows with an empty response sequence are skipped and counted.

    Returns {temperature, teacher_system_prompt (bool: was one given), reverse_kl: {mean, se, n_prompts,
    n_tokens, skipped_empty, per_prompt}, teacher_nll: {mean, se, n_prompts, n_tokens, truncated,
    temperature: 1.0, per_prompt}}; ``per_prompt`` is aligned with ``chats`` (None where skipped).
    """
    n = len(chats)
    if len(student_token_ids) != n or len(teacher_texts) != n:
        raise ValueError(
            f"token_metrics: {n} chats, {len(student_token_ids)} student responses, "
            f"{len(teacher_texts)} teacher texts: must match"
        )
    if student_stop_ids is not None and len(student_stop_ids) != n:
        raise ValueError(f"token_metrics: {len(student_stop_ids)} stop ids for {n} chats")
    vs, vt = _vocab_size(student_model), _vocab_size(teacher_model)
    if vs != vt:
        raise ValueError(f"token_metrics: student vocab {vs} != teacher vocab {vt}: needs a shared tokenizer")
    enc = RowEncoder(tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
    s_prompts = [enc.encode_prompt({"messages": [dict(m) for m in c]})["prompt_ids"] for c in chats]
    t_prompts = [
        enc.encode_prompt({"messages": teacher_view(c, teacher_system_prompt)})["prompt_ids"] for c in chats
    ]
    samples = []
    for k in range(n):
        ids = [int(t) for t in student_token_ids[k]]
        stop = student_stop_ids[k] if student_stop_ids is not None else None
        samples.append(ids + ([int(stop)] if stop is not None else []))
    kw = dict(batch_size=batch_size, pad_id=pad_id, mesh=mesh, rules=rules)

    ratios = token_log_ratios(
        student_model, teacher_model, s_prompts, t_prompts, samples, temperature=temperature, **kw
    )
    kl_rows: list[float | None] = [float(r.mean()) if r.size else None for r in ratios]
    kl_mean, kl_se = _mean_se([v for v in kl_rows if v is not None])

    with_ref = [k for k in range(n) if teacher_texts[k] is not None]
    encoded = [enc.encode_response({"response": teacher_texts[k]}) for k in with_ref]
    t_resp = [e["response_ids"] for e in encoded]
    nll_lp = response_logprobs(student_model, [s_prompts[k] for k in with_ref], t_resp, temperature=1.0, **kw)
    nll_rows: list[float | None] = [None] * n
    for k, lp in zip(with_ref, nll_lp, strict=True):
        nll_rows[k] = float(-lp.mean()) if lp.size else None
    nll_mean, nll_se = _mean_se([v for v in nll_rows if v is not None])
    return {
        "temperature": float(temperature),
        "teacher_system_prompt": teacher_system_prompt is not None,
        "reverse_kl": {
            "mean": kl_mean,
            "se": kl_se,
            "n_prompts": sum(v is not None for v in kl_rows),
            "n_tokens": int(sum(r.size for r in ratios)),
            "skipped_empty": sum(1 for r in ratios if not r.size),
            "per_prompt": kl_rows,
        },
        "teacher_nll": {
            "mean": nll_mean,
            "se": nll_se,
            "n_prompts": sum(v is not None for v in nll_rows),
            "n_tokens": int(sum(lp.size for lp in nll_lp)),
            "truncated": sum(bool(e["response_truncated"]) for e in encoded),
            "temperature": 1.0,
            "per_prompt": nll_rows,
        },
    }
