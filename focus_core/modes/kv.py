"""``kv`` (the paper's aggregation): every chosen chunk, with the dynamic prompt after it, decodes in its
own row; at each step each row's candidate key/value, per layer, is moved in front of the local context
at positions ``0 … n-1`` and the local pass attends to them (docs/design.md, "Aggregation modes").

The candidate entries come from candidate projections: copies of the model's own until trained ones
are set or loaded from an adapter (:mod:`focus_core.adapters`). This module, and the candidate and
adapter stacks with it, is imported only by engines that use ``kv``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .. import adapters
from ..aggregation import KVAggregation
from ..candidates import CandidateProjections
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..errors import FocusConfigError
from ..memory import Forward, KVBlock, Layout
from ..request import Request
from ..rotary import KeyRotation
from .base import EngineParts, Reading
from .chunked import ChunkedMode, chunk_rows


class KV(ChunkedMode):
    name = "kv"

    def __init__(self, parts: EngineParts):
        super().__init__(parts)
        self._projections: CandidateProjections | None = None
        self.trained = False
        self._lock = threading.Lock()

    def serves_auto(self, cfg: FocusConfig) -> bool:
        return self.trained  # auto reads through trained candidates once there are some

    def chunk_limit(self, room: int, fit: int) -> int:
        return room  # their candidate entries share the window

    def prepare(self, cfg: FocusConfig) -> None:
        self.projections()  # refuses a model kv cannot serve now, not mid-stream

    def projections(self) -> CandidateProjections:
        """The candidate projections the chunks are read through: the trained ones once set or loaded,
        else copies of the model's own (made on first use; a model ``kv`` cannot serve is refused)."""
        with self._lock:
            if self._projections is None:
                self._install(CandidateProjections(self.parts.model), trained=False)
            return self._projections

    def set_projections(self, projections: CandidateProjections, trained: bool) -> None:
        with self._lock:
            self._install(projections, trained)

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Use the trained projections saved at ``path`` (checked against the model first: if they do not
        fit, nothing changes)."""
        self.set_projections(adapters.load_adapter(self.parts.model, path), trained=True)

    def save_adapter(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
        if self._projections is None or not self.trained:
            raise FocusConfigError("this engine has no trained candidate projections to save")
        return adapters.save_adapter(self._projections, self.parts.model, path, training)

    def _install(self, projections: CandidateProjections, trained: bool) -> None:
        """Hook ``projections`` in place of the current ones (caller holds the lock)."""
        if self._projections is not None:
            self._projections.detach()
        projections.attach()
        self._projections, self.trained = projections, trained
        self.parts.runner.candidates = projections

    def state_layout(self, plan: ChunkPlan, cfg: FocusConfig, read: int, prefix_slots: int, **parallel) -> Layout:
        # the local pass behind the chunks' candidate entries is rebuilt every step (the last one with every
        # new token but the last)
        step = KVBlock(1, read + len(plan.local) + cfg.max_new_tokens - 1)
        first_pass = Forward(read, len(plan.dynamic_prompt), prefix_slots + len(plan.dynamic_prompt))
        return Layout(state=(chunk_rows(plan, cfg, read, prefix_slots),), first_pass=first_pass, step=step, **parallel)

    def start(self, request: Request, reading: Reading) -> KVAggregation:
        parts, plan = self.parts, request.plan
        chunks, _ = parts.encoder.with_prompt(
            reading.prefixes,
            plan.dynamic_prompt,
            slots=request.layout.state[0].slots,
            candidate=True,
            batch_tokens=request.config.encode_batch_tokens,
        )
        return KVAggregation(parts.runner, KeyRotation.of(parts.model), chunks, list(plan.local))
