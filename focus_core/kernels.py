"""Attention for one query per sequence on CPU in half precision: a decoding step's attention.

PyTorch's CPU flash kernel (what ``sdpa`` runs) splits its work by blocks of queries; a decoding step
has one query per head, so the kernel runs nearly serial and, in bf16, takes ~0.5 ms a layer over 1K
keys where two small matmuls take ~0.09 ms (2-core AVX-512 EPYC; docs/benchmarks.md, "Decoding").
:func:`single_query_attention` is those two matmuls: scores in fp32, the weighted sum of the values in
the cache's dtype, the same result as ``sdpa`` to bf16 rounding.

It serves only the engine's own forwards (:func:`engine_forward`, entered by the model runner): a model
the engine wraps still runs ``sdpa`` unchanged when the caller uses it directly.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_in_engine: contextvars.ContextVar[bool] = contextvars.ContextVar("focus_engine_forward", default=False)

HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def engine_forward() -> Iterator[None]:
    """Within this block, the attention of one query per sequence runs :func:`single_query_attention`."""
    token = _in_engine.set(True)
    try:
        yield
    finally:
        _in_engine.reset(token)


def serves(implementation: str, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether this call of ``implementation`` (the model's attention) is one :func:`single_query_attention`
    computes as transformers' ``sdpa`` would: an engine forward on CPU in half precision, one query per
    sequence, and none of the arguments ``sdpa`` reads besides the mask and the scaling (dropout, a
    position bias, softcapping, which it refuses)."""
    return (
        _in_engine.get()
        and implementation == "sdpa"
        and query.shape[2] == 1
        and query.device.type == "cpu"
        and query.dtype in HALF
        and not kwargs.get("dropout")
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )


def single_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """``softmax(q k^T * scaling + mask) v`` for one query per head.

    query: ``[b, heads, 1, d]``; key, value: ``[b, kv_heads, keys, d]`` (grouped-query: head ``h`` reads
    kv head ``h // (heads / kv_heads)``); mask: ``None``, or ``[b, 1 | heads, 1, keys]`` boolean (``True``
    attends) or additive; ``scaling``: ``None`` for ``d ** -0.5``. Returns ``[b, 1, heads, d]``, the layout
    transformers' attention functions give.
    """
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(b, kv_heads, groups, d).float()  # the heads that share a kv head, side by side
    scale = d**-0.5 if scaling is None else scaling
    scores = (q @ key.float().transpose(-1, -2)) * scale  # [b, kv_heads, groups, keys]
    if mask is not None:  # to [b | 1, kv_heads | 1, groups | 1, keys]
        rows, keys = mask.shape[0], mask.shape[-1]
        mask = mask.reshape(rows, 1, 1, keys) if mask.shape[1] == 1 else mask.reshape(rows, kv_heads, groups, keys)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    out = weights @ value  # [b, kv_heads, groups, d]
    return out.reshape(b, 1, heads, d)
