"""The cascade: the question's own words choose the chunks worth the exit layer's look (docs/design.md,
"Selection").

``select`` chooses its passages with the question's attention ``EXIT_DEPTH`` of the way up the model,
so every document token would run through 60% of the layers before a word is decoded. Most chunks hold
nothing the question asks for. A shallow layer's attention does not tell which (on SmolLM2-135M the
question's attention put the needles' chunks near the top only from layer 14 of 30 in the development
cases tried; below it they ranked anywhere: docs/benchmarks.md, "Cascade"), but the question's words
do: a key, a name or a number the question holds is in the passage that answers it. The first stage
scores every chunk by its best window of ``passage`` tokens: the question's distinct tokens found in
it, each weighted by how rare it is across the chunks (inverse document frequency over the model's own
token ids, so a word in every chunk weighs nothing). It costs no forward. The best-scoring ``share`` of
the chunks (never fewer than the passages the selection holds) run to the exit layer, whose attention
chooses the passages as before; the others never run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .chunking import ChunkPlan


def survivors_kept(chunks: int, share: float, passages: int) -> int:
    """How many of ``chunks`` the first stage keeps: ``share`` of them, and never fewer than the
    ``passages`` the selection may choose (each could come from a chunk of its own)."""
    return min(chunks, max(math.ceil(share * chunks), passages))


def word_scores(plan: ChunkPlan, question: Sequence[int], window: int) -> torch.Tensor:
    """``[chunks]``: per chunk, its best window of ``window`` tokens by the inverse-document-frequency
    weight of the ``question``'s distinct tokens it holds (``log(n / df)`` for a token in ``df`` of the
    ``n`` chunks: 0 for one in every chunk)."""
    words = torch.tensor(sorted(set(question)), dtype=torch.long)  # [q]
    holds = [torch.tensor(c, dtype=torch.long)[None, :] == words[:, None] for c in plan.chunks]  # [q, len(c)]
    df = torch.stack([h.any(dim=1) for h in holds]).sum(dim=0)  # [q]: chunks holding each word
    idf = torch.log(len(plan.chunks) / df.clamp_min(1))
    scores = []
    for h in holds:
        near = F.max_pool1d(h.float()[None], window, stride=1, padding=window // 2)[0]  # [q, ~len(c)]
        scores.append((idf[:, None] * near).sum(dim=0).max())
    return torch.stack(scores)


def survivors(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best-scoring chunks (indices, in document order; ties to the earlier chunk)."""
    return sorted(scores.argsort(descending=True, stable=True)[:keep].tolist())
