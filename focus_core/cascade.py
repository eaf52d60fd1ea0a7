"""The cascade: a shallow layer over every chunk keeps the chunks worth a deep look (docs/design.md,
"Selection").

``select`` chooses its passages with the question's attention ``EXIT_DEPTH`` of the way up the model,
so every document token runs through 60% of the layers before a word is decoded. Most chunks hold
nothing the question asks for, and a shallow layer already tells which ones might: the question's
attention there falls on the tokens that share its words and names (PromptDistill, GemFilter and
FastKV see the same early signal). The first stage runs every chunk up to ``CASCADE_DEPTH`` of the way
up (its prefix KV cached like any other) and keeps a share of them; only those run to the exit layer,
whose attention chooses the passages as before. Chunks are kept by their best passage under the whole
question's attention, and each part of the question keeps the chunk it points at
(:func:`focus_core.selection.part_peaks`), so the weaker keys of a several-key question survive.
"""

from __future__ import annotations

import math

import torch
from transformers import PretrainedConfig

from .chunking import ChunkPlan
from .selection import default_exit_layer, memory_mass, part_peaks, pooled

# Chosen on the development part of the held-out protocol, on both models (docs/benchmarks.md,
# "Cascade"): from about a fifth of the way up, the question's attention keeps every needle's chunk
# among the best quarter of the chunks.
CASCADE_DEPTH = 0.2


def first_stage_layer(config: PretrainedConfig, exit_layer: int, depth: float = CASCADE_DEPTH) -> int | None:
    """The first stage's layer for a model of this config (the next full-attention layer from ``depth``
    of the way up, as for the exit layer), or ``None`` where that is not below ``exit_layer``."""
    layer = default_exit_layer(config, depth)
    return layer if layer < exit_layer else None


def survivors_kept(chunks: int, share: float, passages: int) -> int:
    """How many of ``chunks`` the first stage keeps: ``share`` of them, and never fewer than the
    ``passages`` the selection may choose (each could come from a chunk of its own)."""
    return min(chunks, max(math.ceil(share * chunks), passages))


def pays(first: int, exit_layer: int, kept: int, chunks: int) -> bool:
    """Whether the cascade runs fewer layer-tokens than one stage does: every chunk through
    ``first + 1`` layers and ``kept`` of them through ``exit_layer + 1``, against every chunk through
    ``exit_layer + 1``."""
    return (first + 1) / (exit_layer + 1) + kept / chunks < 1


def survivors(grid: torch.Tensor, plan: ChunkPlan, *, passage: int, keep: int, drop: float | None) -> list[int]:
    """The chunks (indices, in order) the first stage keeps: the ``keep`` whose best window of ``passage``
    tokens draws the most of the whole question's attention, and, with ``drop``, the chunk each part of
    the question points at.

    grid: ``[chunks, queries, C]``, the first stage's attention over :func:`~focus_core.selection.probed`
    ``(plan)``."""
    mass = memory_mass(grid, plan)  # [queries, memory tokens]
    window = pooled(mass.sum(dim=0), passage)  # [memory tokens]
    best = torch.stack([window[a:b].max() for a, b in plan.ranges])  # [chunks]
    kept = set(best.argsort(descending=True, stable=True)[:keep].tolist())
    if drop is not None:
        for peak in part_peaks(mass, passage=passage, skip=0, drop=drop):
            kept.update(i for i, (a, b) in enumerate(plan.ranges) if a < peak.end and peak.start < b)
    return sorted(kept)
