"""Candidate aggregation (DESIGN §2 step 6) and the per-step state of parallel decoding (step 7).

An aggregation turns the current chunk batch and local context into one next-token distribution
(``next_logits``) and advances every sequence by the chosen token (``append``).

- :class:`EntropyAggregation` (training-free): each chunk's candidate position and the local context
  each give a distribution; the one with the lowest entropy wins. With no chunks it is plain decoding.
- :class:`KVAggregation` (the paper's): each chunk's candidate key/value, per layer, is moved in front
  of the local context at positions ``0 … n-1``; the local pass attends to them and gives the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .candidates import reposition_keys
from .runner import ModelRunner, SequenceBatch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class EntropyAggregation:
    """Lowest-entropy pick among the chunk candidates and the local context."""

    def __init__(self, local: SequenceBatch, local_logits: torch.Tensor,
                 chunks: SequenceBatch | None = None, chunk_logits: torch.Tensor | None = None):
        self.local, self.local_logits = local, local_logits  # [1, vocab]
        self.chunks, self.chunk_logits = chunks, chunk_logits  # [n, vocab]

    def next_logits(self) -> torch.Tensor:
        if self.chunks is None:
            return self.local_logits[0]
        candidates = torch.cat([self.chunk_logits, self.local_logits])  # [n + 1, vocab]
        return candidates[entropy(candidates).argmin()]

    def append(self, token: int) -> None:
        t = torch.tensor([token], device=self.local.kv.device)
        self.local_logits = self.local.append(t)
        if self.chunks is not None:
            self.chunk_logits = self.chunks.append(t)


class KVAggregation:
    """The local pass over ``[candidate KV of every chunk] + local``, recomputed every step (exact)."""

    def __init__(self, runner: ModelRunner, rotary_emb: nn.Module, chunks: SequenceBatch, local: list[int]):
        self.runner, self.rotary_emb, self.chunks = runner, rotary_emb, chunks
        self.local = list(local)

    def next_logits(self) -> torch.Tensor:
        n = self.chunks.rows
        keys, values = self.chunks.kv.last_slot()  # per layer [n, kv_heads, head_dim]
        shift = torch.arange(n, device=self.chunks.kv.device) - (self.chunks.next_positions - 1)
        memory_keys = torch.stack([reposition_keys(k, shift, self.rotary_emb) for k in keys])  # [L, n, kvh, hd]
        memory_values = torch.stack(values)
        local = SequenceBatch(self.runner, rows=1, capacity=n + len(self.local))
        local.kv.skip(n)
        local.kv.write_prefix(0, memory_keys.transpose(1, 2), memory_values.transpose(1, 2))
        local.next_positions.fill_(n)
        return local.append(torch.tensor(self.local, device=self.chunks.kv.device))[0]

    def append(self, token: int) -> None:
        self.chunks.append(torch.tensor([token], device=self.chunks.kv.device), candidate_last=True)
        self.local.append(token)
