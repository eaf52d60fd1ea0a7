"""The paper's parallel pass, shared by ``entropy``, ``focus`` and ``kv`` (docs/design.md, "Relevance").

Every chunk is encoded after its own [BOS] (prefix KV from the prefix cache where it was seen before)
with the dynamic prompt appended; how much better it makes the model predict the dynamic prompt than
no chunk does is its relevance (:mod:`focus_core.relevance`). The most relevant chunks' prefixes are
kept (and, in a process group, gathered from the processes that hold them) for the mode to decode.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..memory import KVBlock, Layout, parallel_buffers
from ..relevance import choose_chunks
from ..request import Request
from .base import Mode, Reading


class ChunkedMode(Mode):
    """A mode that decodes over the most relevant chunks' prefixes. Subclasses say how many chunks they
    read (``chunk_limit``), whether the opening chunk is always read (``pinned``), how many chunk tokens
    fit (``room``) and the decoding state (``state_layout``, ``start``)."""

    pinned: tuple[int, ...] = ()

    def chunk_limit(self, room: int, fit: int) -> int | None:
        """The most chunks this mode can read, given the window's ``room`` in tokens and the ``fit``
        whole chunks in it (``None``: no limit beyond ``top_chunks``)."""
        return None

    def chunks_read(self, cfg: FocusConfig) -> int:
        """How many chunks decoding reads: ``top_chunks``, by default as many as fit the window beside the
        local context and the answer."""
        room = self.parts.native_window - 1 - cfg.local_window - cfg.max_new_tokens
        fit = room // cfg.chunk_size
        if cfg.top_chunks is None:
            return fit
        limit = self.chunk_limit(room, fit)
        return cfg.top_chunks if limit is None else min(cfg.top_chunks, limit)

    def room(self, plan: ChunkPlan, cfg: FocusConfig) -> int:
        """Chunk tokens decoding can read."""
        return plan.memory_tokens

    def state_layout(self, plan: ChunkPlan, cfg: FocusConfig, read: int, prefix_slots: int, **parallel) -> Layout:
        """The decoding state over ``read`` chunks of at most ``prefix_slots`` [BOS] + chunk slots."""
        raise NotImplementedError

    def layout(self, ids: Sequence[int], plan: ChunkPlan, cfg: FocusConfig, keep: int | None = None) -> Layout:
        """``keep``: chunks kept for decoding (default: what the mode reads)."""
        parts = self.parts
        bos, mine = len(parts.encoder.bos), parts.my_chunks(plan).chunks
        prefix_slots = bos + max(len(c) for c in plan.chunks)
        read = min(self.chunks_read(cfg) if keep is None else keep, len(plan.chunks))
        parallel = parallel_buffers(
            chunks=len(mine),
            prefix_slots=prefix_slots,
            dynamic_prompt=len(plan.dynamic_prompt),
            read=read,
            batch_tokens=cfg.encode_batch_tokens,
            cached=parts.stored_prefixes([bos + len(c) for c in mine]),
        )
        return self.state_layout(plan, cfg, read, prefix_slots, **parallel)

    def read(self, request: Request, keep: int | None = None) -> Reading:
        """Score every chunk, choose the most relevant (``keep``, by default what the layout keeps, within
        ``room``) and gather their prefix KV (from the processes holding them, in a process group)."""
        parts, plan, cfg = self.parts, request.plan, request.config
        layout = request.layout if keep is None else self.layout(request.ids, plan, cfg, keep)
        keep, group = layout.kept.rows, parts.group
        offset = group.share(len(plan.chunks)).start if group else 0
        pinned = self.pinned if keep else ()
        scored = parts.encoder.score(
            parts.my_chunks(plan),
            keep=keep,
            layout=layout,
            progress=parts.progress(cfg),
            pinned=pinned if offset == 0 else (),
        )
        loglik = scored.loglik if group is None else group.gather_rows(scored.loglik, len(plan.chunks))
        relevance = loglik - parts.encoder.baseline(plan.dynamic_prompt)
        lengths = [len(c) for c in plan.chunks]
        chosen = choose_chunks(relevance, lengths, max_chunks=keep, max_tokens=self.room(plan, cfg), pinned=pinned)
        if group is None:
            prefixes = [scored.kept[i] for i in chosen]
        else:
            r, bos = parts.runner, len(parts.encoder.bos)

            def shape(i: int) -> tuple[int, ...]:
                return (r.num_layers, r.kv_heads, bos + lengths[i], r.head_dim)

            prefixes = group.exchange_prefixes(scored.kept, chosen, len(plan.chunks), shape, r.dtype)
        return Reading(plan.ranges, relevance, chosen, prefixes)


def chunk_rows(plan: ChunkPlan, cfg: FocusConfig, read: int, prefix_slots: int) -> KVBlock:
    """Each chosen chunk decoding in its own row: [BOS] + chunk + dynamic prompt + the answer."""
    return KVBlock(read, prefix_slots + len(plan.dynamic_prompt) + cfg.max_new_tokens)
