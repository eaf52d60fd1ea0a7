"""One call, from its prompt to its last token (docs/design.md, "Data path").

A :class:`Request` is made when a call is made, from the prompt and the call's settings, and is carried
along the whole path. It holds what was decided once (tokens, character offsets, settings, mode, chunk
plan, buffers, memory) and what the call finds and produces as it runs (the reading, the output ids,
why it ended, the sources). :class:`~focus_core.generation.Generation` is a view of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .chunking import ChunkPlan
from .config import FocusConfig
from .memory import Layout, MemoryEstimate
from .relevance import ChunkScore

if TYPE_CHECKING:
    from .modes.base import Mode, Reading

Prompt = str | Sequence[int] | torch.Tensor


@dataclass
class Request:
    """A prompt with everything decided about it: its tokens (and, for text prompts on a fast tokenizer,
    each token's character ``[start, end)``), the call's validated settings (the encoding micro-batch
    already shrunk to the memory budget), the mode (``plain`` when the prompt and its answer fit the
    native window), the chunk plan (``None`` when plain), the buffers it allocates and the memory they
    take. Then, as the call runs: what the reading found, the ids decoded and the finish reason."""

    prompt: Prompt
    ids: list[int]
    offsets: list[tuple[int, int]] | None
    config: FocusConfig
    mode: Mode
    plan: ChunkPlan | None
    layout: Layout
    estimate: MemoryEstimate
    reading: Reading | None = field(default=None, repr=False)
    route: str | None = None  # under auto, why a mode took it over after reading, or why none could (kept when renewed)
    completion_ids: list[int] = field(default_factory=list, repr=False)
    finish_reason: str | None = None
    relevance: list[ChunkScore] | None = field(default=None, repr=False)  # worked out once, when asked for
    sources: list[ChunkScore] | None = field(default=None, repr=False)

    @property
    def plain(self) -> bool:
        return self.plan is None

    def renewed(self) -> Request:
        """The same resolved call, nothing run yet: a request given to a second call starts afresh."""
        return dataclasses.replace(
            self, reading=None, completion_ids=[], finish_reason=None, relevance=None, sources=None
        )
