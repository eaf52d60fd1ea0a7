"""``plain``: a prompt that fits the native window with its answer is read whole, as ``transformers``
would (one sequence, ordinary attention); no chunks, no relevance."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..aggregation import PlainDecoding
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..memory import Layout, one_sequence
from ..request import Request
from .base import Mode


class Plain(Mode):
    name = "plain"
    chunked = False

    def layout(self, ids: Sequence[int], plan: ChunkPlan | None, cfg: FocusConfig) -> Layout:
        return one_sequence(len(ids) + cfg.max_new_tokens, len(ids), self.parts.windows(cfg), context=len(ids))

    def read(self, request: Request, keep: int | None = None) -> None:
        return None

    def start(self, request: Request, reading: None) -> PlainDecoding:
        sequence = self.parts.sequence(request.layout, request.config)
        return PlainDecoding(sequence, sequence.append(torch.tensor(request.ids, device=self.parts.runner.device)))
