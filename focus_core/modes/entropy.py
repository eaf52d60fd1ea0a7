"""``entropy`` (training-free): every chosen chunk, with the dynamic prompt after it, decodes in its own
row beside the local context; at each step the distribution with the lowest entropy gives the token
(docs/design.md, "Aggregation modes")."""

from __future__ import annotations

import torch

from ..aggregation import EntropyAggregation, PlainDecoding
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..memory import Forward, KVBlock, Layout
from ..request import Request
from ..runner import SequenceBatch
from .base import Reading
from .chunked import ChunkedMode, chunk_rows


class Entropy(ChunkedMode):
    name = "entropy"

    def serves_auto(self, cfg: FocusConfig) -> bool:
        return True  # reads any prompt whose chunks fit the window

    def state_layout(self, plan: ChunkPlan, cfg: FocusConfig, read: int, prefix_slots: int, **parallel) -> Layout:
        local = KVBlock(1, len(self.parts.encoder.bos) + len(plan.local) + cfg.max_new_tokens)
        first_pass = Forward(read, len(plan.dynamic_prompt), prefix_slots + len(plan.dynamic_prompt))
        return Layout(state=(chunk_rows(plan, cfg, read, prefix_slots), local), first_pass=first_pass, **parallel)

    def start(self, request: Request, reading: Reading) -> EntropyAggregation:
        parts, plan, layout = self.parts, request.plan, request.layout
        chunks, chunk_logits = parts.encoder.with_prompt(
            reading.prefixes,
            plan.dynamic_prompt,
            slots=layout.state[0].slots,
            candidate=False,
            batch_tokens=request.config.encode_batch_tokens,
        )
        local = SequenceBatch(parts.runner, rows=1, capacity=layout.state[1].slots)
        local_logits = local.append(torch.tensor(parts.encoder.bos + plan.local, device=parts.runner.device))
        return EntropyAggregation(PlainDecoding(local, local_logits), chunks, chunk_logits)
