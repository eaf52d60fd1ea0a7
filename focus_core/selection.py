"""Selection: the passages the question attends to, chosen across the whole document (docs/design.md,
"Selection").

The early-exit pass gives every memory token an attention mass: how much the question's queries (the
dynamic prompt) attend to it in the probe layer. A fact the question needs draws attention to a few
neighbouring tokens (a phrase), so the mass is pooled over a window of ``passage`` tokens (InfiniRetri's
phrase pooling); the best-pooled window is chosen, centred on its peak, then the next best window that
does not overlap it, and so on until ``budget`` tokens are chosen or the attention falls off a cliff (a
window drawing under ``1 / drop`` of the mass of the one chosen before it). Windows are taken from
anywhere in the document, so an answer made of several needles in several chunks is read together; and
where one or a few passages stand far above the rest, only they are read (a small model answers a
distractor's value when the filler around the answer holds lookalikes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from .chunking import ChunkPlan

# Chosen by measurement on the embedded model (README, "Selection"; SmolLM2-135M, 30 layers, RULER and
# needle cases at 32K): the question's attention points at every needle from 60% of the way up (layer
# 18; GemFilter finds the same band, 40-60%, on 8B-12B models); the queries are the question's tokens,
# at most the last PROBE_ROWS (the question and the answer's first words; rows further back are document
# text, which attends to its lookalikes in the chunks, not to what the question needs); the first
# SINK_TOKENS tokens of every chunk draw attention whatever they hold (attention sinks, as a BOS does)
# and say nothing of relevance.
EXIT_DEPTH = 0.6
PROBE_ROWS = 24
MIN_PROBE_ROWS = 4
SINK_TOKENS = 4


def default_exit_layer(config: PretrainedConfig) -> int:
    """The probe layer for a model of this depth: ``EXIT_DEPTH`` of the way up, moved up to the next
    layer with full (not sliding-window) attention where layers differ (Gemma 2/3, ...)."""
    layers = config.num_hidden_layers
    layer = int(EXIT_DEPTH * layers)
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    return next((i for i in full if i >= layer), full[-1] if full else layer)


def probed(plan: ChunkPlan) -> ChunkPlan:
    """The chunks the probe reads: the plan's, with a short last chunk widened to the memory's last
    ``chunk_size`` tokens (overlapping its neighbour). A chunk's attention is a softmax over its own
    tokens, so a chunk of 80 tokens hands each far more than a chunk of 1,024 does; at one length they
    compare."""
    chunks = plan.chunks
    if len(chunks) < 2 or len(chunks[-1]) == len(chunks[0]):
        return plan
    tail = (chunks[-2] + chunks[-1])[-len(chunks[0]) :]
    return dataclasses.replace(plan, chunks=(*chunks[:-1], tail))


def memory_mass(grid: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Per memory token of ``plan``, its mass in ``grid`` (``[chunks, C]``, what the probe read for
    :func:`probed` ``(plan)``) less what a typical chunk's token draws at the same place.

    Every chunk is read on its own with the question right after it, so its first tokens draw attention
    whatever they hold (sinks) and so do its last (recency); over a hundred chunks of filler those chunk
    edges together outscore a needle. The median over chunks at each position is that positional share;
    what is left is the attention a token draws for what it says (with fewer than three chunks there is
    no median to take and the mass is kept as it is). The overlap of a widened last chunk is dropped."""
    if grid.shape[0] >= 3:
        grid = (grid - grid.median(dim=0).values).clamp_min(0)
    overlap = grid.shape[1] - len(plan.chunks[-1]) if plan.chunks else 0  # a widened last chunk's first tokens
    return torch.cat([grid[:-1].reshape(-1), grid[-1, overlap:]]) if overlap else grid.reshape(-1)


def probe_rows(tail: Sequence[str]) -> int:
    """How many of the prompt's last tokens ask the question: those after its last blank line when one
    falls among the last ``PROBE_ROWS`` tokens (a short question set apart from its document, leaving at
    least ``MIN_PROBE_ROWS``), else the last ``PROBE_ROWS``.

    tail: the prompt's last tokens, each decoded on its own."""
    tail = list(tail)[-PROBE_ROWS:]
    for i in range(len(tail) - MIN_PROBE_ROWS - 1, 0, -1):
        if "\n\n" in tail[i] or (tail[i].startswith("\n") and tail[i - 1].endswith("\n")):
            return len(tail) - i - 1
    return len(tail)


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of the memory and their pooled attention mass (``score``)."""

    start: int
    end: int
    score: float

    def __len__(self) -> int:
        return self.end - self.start


def pooled(mass: torch.Tensor, window: int) -> torch.Tensor:
    """``out[i]`` = the mass of the ``window`` tokens centred on token ``i`` (clipped at the ends).

    mass: ``[tokens]``; returns ``[tokens]`` fp32."""
    kernel = torch.ones(1, 1, window, dtype=torch.float32, device=mass.device)
    left = (window - 1) // 2
    padded = F.pad(mass.float()[None, None], (left, window - 1 - left))
    return F.conv1d(padded, kernel)[0, 0]


def select_spans(
    mass: torch.Tensor, *, passage: int, budget: int, skip: int = 0, drop: float | None = None
) -> list[Span]:
    """Non-overlapping windows of ``passage`` tokens with the most pooled mass, ``budget`` tokens in all,
    in document order. The first ``skip`` tokens (the opening, read anyway) are not chosen again. With
    ``drop``, the choosing stops before a window whose mass is under ``1 / drop`` of the previous one's.

    mass: ``[tokens]`` attention mass of each memory token."""
    n = mass.shape[0]
    passage = min(passage, n - skip) if n > skip else 0
    if passage <= 0 or budget <= 0:
        return []
    score = pooled(mass, passage)
    starts = (torch.arange(n, device=mass.device) - (passage - 1) // 2).clamp(skip, n - passage)
    free = torch.ones(n, dtype=torch.bool, device=mass.device)
    free[:skip] = False
    chosen: list[Span] = []
    for _ in range(max(1, budget // passage)):
        fits = _fits(free, starts, passage)
        if not bool(fits.any()):
            break
        start = _recentred(mass, free, int(starts[int(score.masked_fill(~fits, float("-inf")).argmax())]), passage)
        span = Span(start, start + passage, float(mass[start : start + passage].float().sum()))
        if drop is not None and chosen and span.score * drop < chosen[-1].score:
            break
        chosen.append(span)
        free[start : start + passage] = False
    return sorted(chosen, key=lambda s: s.start)


def _recentred(mass: torch.Tensor, free: torch.Tensor, start: int, passage: int) -> int:
    """The window's start moved so that its centre of mass sits in its middle, if the tokens there are free
    (the best window is one of many that hold a short peak; the centred one keeps context on both sides)."""
    window = mass[start : start + passage].float()
    if float(window.sum()) <= 0:
        return start
    centre = start + float((window * torch.arange(passage, device=mass.device)).sum() / window.sum())
    moved = min(max(round(centre) - (passage - 1) // 2, 0), mass.shape[0] - passage)
    return moved if bool(free[moved : moved + passage].all()) else start


def _fits(free: torch.Tensor, starts: torch.Tensor, passage: int) -> torch.Tensor:
    """Per centre: whether its window lies on free tokens only. free: [tokens] bool."""
    taken = torch.cat([torch.zeros(1, device=free.device), (~free).float().cumsum(0)])  # [tokens + 1]
    return (taken[starts + passage] - taken[starts]) == 0


def merge(spans: list[Span]) -> list[tuple[int, int]]:
    """Token ranges to read: ``spans`` (document order) with touching ones joined."""
    ranges: list[tuple[int, int]] = []
    for s in spans:
        if ranges and ranges[-1][1] >= s.start:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], s.end))
        else:
            ranges.append((s.start, s.end))
    return ranges
