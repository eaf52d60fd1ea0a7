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
from .distributed import ChunkGroup
from .runner import ModelRunner, SequenceBatch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class EntropyAggregation:
    """Lowest-entropy pick among the chunk candidates and the local context.

    With a :class:`ChunkGroup` this process holds only its share of the ``total`` chunks; the entropies
    are gathered and the winning distribution is sent by the process that holds it.
    """

    def __init__(self, local: SequenceBatch, local_logits: torch.Tensor,
                 chunks: SequenceBatch | None = None, chunk_logits: torch.Tensor | None = None,
                 group: ChunkGroup | None = None, total: int | None = None):
        self.local, self.local_logits = local, local_logits  # [1, vocab]
        self.chunks, self.chunk_logits = chunks, chunk_logits  # [own chunks, vocab]
        self.group = group
        self.total = total if total is not None else 0 if chunk_logits is None else chunk_logits.shape[0]

    def next_logits(self) -> torch.Tensor:
        if self.total == 0:
            return self.local_logits[0]
        own = entropy(self.chunk_logits) if self.chunks is not None else self.local_logits.new_zeros(0)
        chunk_entropy = own if self.group is None else self.group.gather_rows(own, self.total)  # [total]
        best = int(torch.cat([chunk_entropy, entropy(self.local_logits)]).argmin())  # first minimum wins ties
        if best == self.total:
            return self.local_logits[0]
        if self.group is None:
            return self.chunk_logits[best]
        return self.group.broadcast_row(self.chunk_logits, best, self.total, like=self.local_logits[0])

    def append(self, token: int) -> None:
        t = torch.tensor([token], device=self.local.kv.device)
        self.local_logits = self.local.append(t)
        if self.chunks is not None:
            self.chunk_logits = self.chunks.append(t)


class KVAggregation:
    """The local pass over ``[candidate KV of every chunk] + local``, recomputed every step (exact).

    With a :class:`ChunkGroup` the candidate entries of all processes are gathered first.
    """

    def __init__(self, runner: ModelRunner, rotary_emb: nn.Module, chunks: SequenceBatch | None, local: list[int],
                 group: ChunkGroup | None = None, total: int | None = None):
        self.runner, self.rotary_emb, self.chunks = runner, rotary_emb, chunks
        self.local = list(local)
        self.group = group
        self.total = total if total is not None else 0 if chunks is None else chunks.rows

    def _candidate_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values ``[chunks, layers, kv_heads, head_dim]`` at each chunk's last slot, and its position."""
        if self.chunks is not None:
            keys, values = (torch.stack(t, dim=1) for t in self.chunks.kv.last_slot())
            positions = self.chunks.next_positions - 1
        else:  # this process holds no chunk
            shape = (0, self.runner.num_layers, self.runner.kv_heads, self.runner.head_dim)
            keys = values = torch.zeros(shape, dtype=self.runner.dtype, device=self.runner.device)
            positions = torch.zeros(0, dtype=torch.long, device=self.runner.device)
        if self.group is not None:
            keys, values, positions = (self.group.gather_rows(t, self.total) for t in (keys, values, positions))
        return keys, values, positions

    def next_logits(self) -> torch.Tensor:
        keys, values, positions = self._candidate_entries()
        n = keys.shape[0]
        shift = torch.arange(n, device=keys.device) - positions
        memory_keys = torch.stack([reposition_keys(keys[:, i], shift, self.rotary_emb) for i in range(keys.shape[1])])
        memory_values = values.transpose(0, 1)  # [layers, n, kv_heads, head_dim]
        local = SequenceBatch(self.runner, rows=1, capacity=n + len(self.local))
        local.kv.skip(n)
        local.kv.write_prefix(0, memory_keys.transpose(1, 2), memory_values.transpose(1, 2))
        local.next_positions.fill_(n)
        return local.append(torch.tensor(self.local, device=keys.device))[0]

    def append(self, token: int) -> None:
        if self.chunks is not None:
            self.chunks.append(torch.tensor([token], device=self.chunks.kv.device), candidate_last=True)
        self.local.append(token)
