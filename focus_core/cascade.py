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
attention chooses the passages as before; the others never run.
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
    asked, asked_pairs = _codes(question)
    terms = torch.unique(torch.cat([asked, asked_pairs[:-1]]) if pairs else asked)  # [q]
    holds = []  # per chunk [q, len(c)]: the terms found at each token (a pair at its first token)
    for chunk in plan.chunks:
        tokens, adjacent = _codes(chunk)
        found = tokens[None, :] == terms[:, None]
        if pairs:
            found |= adjacent[None, :] == terms[:, None]
        holds.append(found)
    df = torch.stack([h.any(dim=1) for h in holds]).sum(dim=0)  # [q]: chunks holding each term
    idf = torch.log(len(plan.chunks) / df.clamp_min(1))
    scores = []
    for h in holds:
        near = F.max_pool1d(h.float()[None], window, stride=1, padding=window // 2)[0]  # [q, ~len(c)]
        scores.append((idf[:, None] * near).sum(dim=0).max())
    return torch.stack(scores)


def _codes(ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` as int64 codes: each token's id, and each pair of adjacent tokens as one code past every id
    (``(a + 1) << 32 | b``; -1 after the last token)."""
    tokens = torch.tensor(ids, dtype=torch.long)
    adjacent = ((tokens[:-1] + 1) << 32) | tokens[1:]
    return tokens, torch.cat([adjacent, torch.full((min(len(ids), 1),), -1, dtype=torch.long)])


def survivors(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best-scoring chunks (indices, in document order; ties to the earlier chunk)."""
    return sorted(scores.argsort(descending=True, stable=True)[:keep].tolist())
