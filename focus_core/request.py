"""One call, resolved once (docs/design.md, "Data path").

A :class:`Request` is built when a call is made, from the prompt and the call's settings, and is then
carried along the whole path: reading, decoding, attribution and the integrations' usage read it instead
of working anything out again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from .chunking import ChunkPlan
from .config import FocusConfig
from .memory import Layout, MemoryEstimate

Prompt = str | Sequence[int] | torch.Tensor


@dataclass
class Request:
    """A prompt with everything decided about it: its tokens, the call's validated settings (the encoding
    micro-batch already shrunk to the memory budget), the aggregation used (``"plain"`` when the prompt
    and its answer fit the native window: one ordinary forward), the chunk plan (``None`` when plain),
    the buffers it allocates and the memory they take, and, in ``select``, the exit layer."""

    prompt: Prompt
    ids: list[int]
    config: FocusConfig
    mode: str
    plan: ChunkPlan | None
    layout: Layout
    estimate: MemoryEstimate
    exit_layer: int | None = None
    _offsets: list[tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def plain(self) -> bool:
        return self.plan is None

    def offsets(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[int, int]] | None:
        """Character ``[start, end)`` of every prompt token (text prompts and fast tokenizers; else
        ``None``), worked out on first use: only attribution needs them."""
        if self._offsets is None and isinstance(self.prompt, str) and tokenizer.is_fast:
            self._offsets = tokenizer(self.prompt, return_offsets_mapping=True).offset_mapping
        return self._offsets
