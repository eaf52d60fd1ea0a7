"""``focus``: ordinary attention over ``[BOS] + the chosen chunks (document order) + local context``,
the chunks' cached keys rotated into place (``focus_kv="reuse"``) or their tokens read again
(``"reencode"``, and models without rotary positions). The opening chunk is always read: a prompt's
instructions usually sit there, and the question at its end does not repeat them."""

from __future__ import annotations

from ..aggregation import PlainDecoding, focus_decoding
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..memory import Layout, one_sequence
from ..request import Request
from ..rotary import KeyRotation
from .base import Reading
from .chunked import ChunkedMode


class Focus(ChunkedMode):
    name = "focus"
    pinned = (0,)

    def chunk_limit(self, room: int, fit: int) -> int:
        return fit  # their tokens share the window

    def room(self, plan: ChunkPlan, cfg: FocusConfig) -> int:
        """Chunk tokens beside [BOS], the local context and the answer."""
        return self.parts.native_window - len(self.parts.encoder.bos) - len(plan.local) - cfg.max_new_tokens

    def rotation(self, cfg: FocusConfig) -> KeyRotation | None:
        """How the chosen chunks' stored keys move into place; ``None``: their tokens are read again."""
        return KeyRotation.of(self.parts.model) if cfg.focus_kv == "reuse" else None

    def state_layout(self, plan: ChunkPlan, cfg: FocusConfig, read: int, prefix_slots: int, **parallel) -> Layout:
        bos = len(self.parts.encoder.bos)
        read_tokens = min(read * (prefix_slots - bos), self.room(plan, cfg))
        slots = bos + read_tokens + len(plan.local) + cfg.max_new_tokens
        first = read_tokens + len(plan.local) if self.rotation(cfg) is None else len(plan.local)
        return one_sequence(slots, first, self.parts.windows(cfg), **parallel)

    def start(self, request: Request, reading: Reading) -> PlainDecoding:
        plan, cfg, parts = request.plan, request.config, self.parts
        return focus_decoding(
            parts.runner,
            self.rotation(cfg),
            [plan.chunks[i] for i in reading.chosen],
            reading.prefixes,
            parts.encoder.bos,
            list(plan.local),
            request.layout.state[0].slots,
            cfg.encode_batch_tokens,
        )
