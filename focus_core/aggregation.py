"""Aggregation and the per-step decoding state (docs/design.md, "Aggregation modes").

A decoding state turns what was read into one next-token distribution (``next_logits``) and advances
every sequence it holds by the chosen token (``append``). All of them decode over the chunks chosen by
relevance only (:mod:`.relevance`), so a decoding step costs the same whatever the prompt's length.

- :class:`PlainDecoding`: one sequence, ordinary attention; :func:`focus_decoding` builds it over
  ``[BOS] + chosen chunks + local`` (``focus``) and a prompt that fits the window is decoded with it.
- :class:`EntropyAggregation` (training-free): each chosen chunk's candidate position and the local
  context each give a distribution; the one with the lowest entropy wins.
- :class:`KVAggregation` (the paper's): each chosen chunk's candidate key/value, per layer, is moved in
  front of the local context at positions ``0 … n-1``; the local pass attends to them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .kv_cache import PrefixKV
from .rotary import KeyRotation
from .runner import ModelRunner, SequenceBatch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class PlainDecoding:
    """One sequence decoded as usual: its last position gives the next-token logits."""

    def __init__(self, sequence: SequenceBatch, logits: torch.Tensor):
        self.sequence, self.logits = sequence, logits  # logits: [1, vocab]

    def next_logits(self) -> torch.Tensor:
        return self.logits[0]

    def append(self, token: int) -> None:
        self.logits = self.sequence.append(torch.tensor([token], device=self.sequence.kv.device))


def focus_decoding(
    runner: ModelRunner,
    rotation: KeyRotation | None,
    chunks: list[tuple[int, ...]],
    prefixes: list[PrefixKV],
    bos: tuple[int, ...],
    local: list[int],
    capacity: int,
    forward_tokens: int | None = None,
) -> PlainDecoding:
    """Ordinary attention over ``[BOS] + the chosen chunks (document order) + local``.

    ``chunks`` are the chosen chunks' token ids and ``prefixes`` their ``[BOS] + chunk`` KV. With a
    rotary embedding (``rotation``) the cached KV is reused: each chunk's keys are rotated to the
    positions it takes in the joint sequence and the chunks' own BOS entries are dropped (one BOS
    leads). Without one (absolute position embeddings) the chunks are encoded again, together.
    Chunk tokens then see their own chunk only, while the local context sees all of them. ``capacity``:
    the slots of the sequence (the new tokens included); ``forward_tokens``: the most tokens one forward
    reads (the model's sliding-window layers then keep only their window, as in ``plain``).
    """
    device = runner.device
    total = len(bos) + sum(len(c) for c in chunks)
    sequence = SequenceBatch(runner, rows=1, capacity=capacity, forward_tokens=forward_tokens)
    if rotation is None:
        ids = list(bos) + [t for c in chunks for t in c] + local
        return PlainDecoding(sequence, sequence.append(torch.tensor(ids, device=device)))
    drop, at = len(bos), 0  # each prefix starts with its own BOS
    for j, p in enumerate(prefixes):
        keys, values = p.keys.to(device), p.values.to(device)  # [layers, kv_heads, T, head_dim]
        skip = drop if j > 0 else 0
        keys, values = keys[:, :, skip:], values[:, :, skip:]
        shift = torch.tensor([at - skip], device=device)
        sequence.kv.extend(rotation.move_layers(keys, shift), values)
        at += keys.shape[2]
    sequence.next_positions.fill_(total)
    return PlainDecoding(sequence, sequence.append(torch.tensor(local, device=device)))


class EntropyAggregation:
    """Lowest-entropy pick among the chunk candidates and the local context."""

    def __init__(self, local: PlainDecoding, chunks: SequenceBatch, chunk_logits: torch.Tensor):
        self.local = local
        self.chunks, self.chunk_logits = chunks, chunk_logits  # [chunks, vocab]

    def next_logits(self) -> torch.Tensor:
        local = self.local.next_logits()
        candidates = torch.cat([self.chunk_logits, local[None]])
        best = int(entropy(candidates).argmin())  # the first minimum wins ties
        return candidates[best]

    def append(self, token: int) -> None:
        self.local.append(token)
        self.chunk_logits = self.chunks.append(torch.tensor([token], device=self.chunks.kv.device))


def kv_local_pass(
    runner: ModelRunner,
    rotation: KeyRotation,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    positions: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """The local pass of ``kv`` aggregation (docs/design.md, "Aggregation modes"), for ``b`` rows at once.

    Row ``r`` sees its own ``n`` candidate entries re-positioned to ``0 … n-1``, then its tokens at
    ``n …``. keys, values: per layer ``[b, n, kv_heads, head_dim]``, keys after RoPE at ``positions``
    ``[b, n]``; rows: ``[b, t]`` token ids. Returns the last hidden states ``[b, t, hidden]``. The engine
    runs one row per decoding step; training runs one row per teacher-forced step (gradients flow).
    """
    b, n = positions.shape
    shift = (torch.arange(n, device=positions.device)[None, :] - positions).reshape(-1)  # [b * n]
    memory = DynamicCache(config=runner.model.config)
    for layer, (k, v) in enumerate(zip(keys, values)):
        kv_heads, head_dim = k.shape[2], k.shape[3]
        k = rotation.move(k.reshape(b * n, kv_heads, head_dim), shift, layer).view(b, n, kv_heads, head_dim)
        memory.update(k.transpose(1, 2), v.transpose(1, 2), layer)  # [b, kv_heads, n, head_dim]
    row_positions = torch.arange(n, n + rows.shape[1], device=rows.device).expand(b, -1)
    return runner.hidden_states(rows, row_positions, memory, None)


class KVAggregation:
    """The local pass over ``[candidate KV of every chunk] + local``, recomputed every step (exact)."""

    def __init__(self, runner: ModelRunner, rotation: KeyRotation, chunks: SequenceBatch, local: list[int]):
        self.runner, self.rotation, self.chunks = runner, rotation, chunks
        self.local = list(local)

    def next_logits(self) -> torch.Tensor:
        keys, values = self.chunks.kv.last_slot()  # per layer [n, kv_heads, head_dim]
        positions = (self.chunks.next_positions - 1)[None, :]  # [1, n]
        rows = torch.tensor([self.local], device=positions.device)
        hidden = kv_local_pass(
            self.runner, self.rotation, [k[None] for k in keys], [v[None] for v in values], positions, rows
        )
        return self.runner.logits(hidden[0, -1:])[0]

    def append(self, token: int) -> None:
        self.chunks.append(torch.tensor([token], device=self.chunks.kv.device), candidate_last=True)
        self.local.append(token)
