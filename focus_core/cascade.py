"""The cascade: the question's own words choose the chunks worth the exit layer's look (docs/design.md,
"Selection").

``select`` chooses its passages with the question's attention ``EXIT_DEPTH`` of the way up the model,
so every document token would run through 60% of the layers before a word is decoded. Most chunks hold
nothing the question asks for. A shallow layer's attention does not tell which (on SmolLM2-135M the
question's attention put the needles' chunks near the top only from layer 14 of 30 in the development
cases tried; below it they ranked anywhere: docs/benchmarks.md, "Cascade"), but the question's words
do: a key, a name or a number the question holds is in the passage that answers it. The first stage
scores every chunk by its best window of ``passage`` tokens: the question's distinct tokens and pairs
of adjacent tokens found in it, each weighted by how rare it is across the chunks (inverse document
frequency over the model's own token ids, so a word in every chunk weighs nothing). It costs no
forward. The best-scoring ``share`` of the chunks (no more than the geometric mean of the chunks and
the passages the selection holds, never fewer than those passages) run to the exit layer, whose
attention chooses the passages as before; the others never run. The same weights laid over every memory
token, per token of the question (:func:`word_mass`), let a key the question spells point at its
passage beside the attention (:func:`focus_core.selection.choose_spans`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .chunking import ChunkPlan


def survivors_kept(chunks: int, share: float, passages: int) -> int:
    """How many of ``chunks`` the first stage keeps: ``share`` of them, at most the geometric mean of the
    chunks and the ``passages`` the selection may choose (half of 32 chunks for 8 passages, a quarter of
    128: the longer the document, the more of it the question's rare terms rule out), and never fewer
    than the passages (each could come from a chunk of its own). A share of 1 keeps every chunk."""
    if share >= 1:
        return chunks
    at_most = math.ceil(math.sqrt(chunks * passages))
    return min(chunks, max(min(math.ceil(share * chunks), at_most), passages))


def word_scores(plan: ChunkPlan, question: Sequence[int], window: int, pairs: bool = True) -> torch.Tensor:
    """``[chunks]``: per chunk, its best window of ``window`` tokens by the inverse-document-frequency
    weight of the ``question``'s distinct terms it holds (``log(n / df)`` for a term in ``df`` of the
    ``n`` chunks: 0 for one in every chunk). The terms are its tokens and, with ``pairs``, its pairs of
    adjacent tokens: a key spelled in common pieces (a UUID's digits and letters) is rare only as a
    sequence."""
    _, idf, holds = _term_hits(plan, question, pairs)
    scores = []
    for h in holds:
        near = F.max_pool1d(h.float()[None], window, stride=1, padding=window // 2)[0]  # [q, ~len(c)]
        scores.append((idf[:, None] * near).sum(dim=0).max())
    return torch.stack(scores)


def word_mass(plan: ChunkPlan, question: Sequence[int], pairs: bool = True) -> torch.Tensor:
    """``[len(question), memory tokens]``: per token of the ``question``, the inverse-document-frequency
    weight (as in :func:`word_scores`) of it, and with ``pairs`` of it and the next question token, at
    each memory token where it is found (a pair at its first token): the question's words laid over the
    memory as its attention is."""
    if not plan.chunks or not question:
        return torch.zeros(len(question), plan.memory_tokens)
    terms, idf, holds = _term_hits(plan, question, pairs)
    weights = torch.where(torch.cat(holds, dim=1), idf[:, None], 0.0)  # [terms, memory tokens]
    weights = torch.cat([weights, weights.new_zeros(1, weights.shape[1])])  # row -1: no term

    def rows(codes: torch.Tensor) -> torch.Tensor:
        """Each code's row of ``weights`` (the zero row where it is no term): ``[len(codes), memory tokens]``."""
        at = torch.searchsorted(terms, codes).clamp_max(len(terms) - 1)
        return weights[torch.where(terms[at] == codes, at, -1)]

    asked, asked_pairs = _codes(question)
    return rows(asked) + rows(asked_pairs) if pairs else rows(asked)


def _term_hits(
    plan: ChunkPlan, question: Sequence[int], pairs: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The ``question``'s distinct terms (``[q]`` codes, sorted: :func:`_codes`), their weights
    ``log(n / df)`` and, per chunk, where each is found (``[q, len(chunk)]`` bool)."""
    asked, asked_pairs = _codes(question)
    terms = torch.unique(torch.cat([asked, asked_pairs[:-1]]) if pairs else asked)  # [q]
    holds = []
    for chunk in plan.chunks:
        tokens, adjacent = _codes(chunk)
        found = tokens[None, :] == terms[:, None]
        if pairs:
            found |= adjacent[None, :] == terms[:, None]
        holds.append(found)
    df = torch.stack([h.any(dim=1) for h in holds]).sum(dim=0)  # [q]: chunks holding each term
    return terms, torch.log(len(plan.chunks) / df.clamp_min(1)), holds


def _codes(ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` as int64 codes: each token's id, and each pair of adjacent tokens as one code past every id
    (``(a + 1) << 32 | b``; -1 after the last token)."""
    tokens = torch.tensor(ids, dtype=torch.long)
    adjacent = ((tokens[:-1] + 1) << 32) | tokens[1:]
    return tokens, torch.cat([adjacent, torch.full((min(len(ids), 1),), -1, dtype=torch.long)])


def survivors(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best-scoring chunks (indices, in document order; ties to the earlier chunk)."""
    return sorted(scores.argsort(descending=True, stable=True)[:keep].tolist())
