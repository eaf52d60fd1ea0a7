"""Relevance: which chunks matter to the question, from the model itself (docs/design.md, "Relevance").

The parallel pass already runs the dynamic prompt ``d`` (the prompt's tail, holding the question)
after every chunk. How much better a chunk makes the model predict ``d`` than no chunk does is the
chunk's relevance, a query-likelihood score in nats:

    relevance_i = log p(d | [BOS] + m_i) - log p(d | [BOS])      (summed over d[1:], teacher-forced)

No external retriever and no embedding index: the reader is its own retriever. The scores pick the
chunks that decoding reads (:func:`choose_chunks`) and tell the user where an answer came from
(:class:`ChunkScore`). ``focus`` also always reads the first chunk: a prompt's opening usually holds
its instructions (system prompt, task description), which a question at the end does not repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkScore:
    """One memory chunk of a prompt and its relevance to the prompt's question.

    ``token_span`` is ``[start, end)`` in the prompt's token ids; ``char_span`` the same in the prompt
    text (``None`` when the prompt was given as token ids); ``text`` the chunk's text.
    """

    index: int
    score: float
    token_span: tuple[int, int]
    char_span: tuple[int, int] | None
    text: str


def choose_chunks(
    scores: torch.Tensor, lengths: list[int], *, max_chunks: int, max_tokens: int, pinned: tuple[int, ...] = ()
) -> list[int]:
    """Indices (in document order) of the chunks decoding reads: the ``pinned`` ones, then the most
    relevant by falling score (the earlier chunk first on ties), at most ``max_chunks`` chunks and
    ``max_tokens`` tokens in all."""
    order = list(pinned) + sorted(set(range(len(lengths))) - set(pinned), key=lambda i: (-float(scores[i]), i))
    chosen, used = [], 0
    for i in order:
        if len(chosen) == max_chunks:
            break
        if used + lengths[i] <= max_tokens:
            chosen.append(i)
            used += lengths[i]
    return sorted(chosen)


def top_indices(scores: torch.Tensor, indices: list[int], keep: int, pinned: tuple[int, ...] = ()) -> list[int]:
    """The ``pinned`` and the highest-scoring of ``indices`` (earlier first on ties), ``keep`` in all."""
    rest = sorted(set(indices) - set(pinned), key=lambda i: (-float(scores[i]), i))
    return ([i for i in pinned if i in indices] + rest)[:keep]
