"""Dynamic condensing, batched (DESIGN §2 step 5): every ``[BOS] + m_i + d`` through the model at once.

The prefixes ``[BOS] + m_i`` do not depend on the question, so their KV is looked up in the
content-addressed :class:`PrefixCache` first; only the missing ones are run, micro-batched to a token
budget. Cached prefixes live in host memory, so on a GPU they do not take device memory. Then the dynamic prompt ``d`` runs against all prefixes in one batched pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .chunking import ChunkPlan
from .kv_cache import PrefixCache, PrefixKV, prefix_key
from .runner import ModelRunner, SequenceBatch


@dataclass
class EncodingStats:
    """Counters for what the encoder actually computed (thread-safe increments)."""

    chunks_encoded: int = 0
    tokens_encoded: int = 0
    chunks_reused: int = 0
    encode_seconds: float = 0.0  # wall time spent encoding chunk prefixes
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, encoded: int = 0, tokens: int = 0, reused: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.chunks_encoded += encoded
            self.tokens_encoded += tokens
            self.chunks_reused += reused
            self.encode_seconds += seconds


class ChunkEncoder:
    """Builds the chunk batch of a plan: cached or freshly encoded prefixes, then the dynamic prompt."""

    def __init__(self, runner: ModelRunner, prefix_cache: PrefixCache, bos_token_id: int | None):
        self.runner = runner
        self.prefix_cache = prefix_cache
        self.bos = () if bos_token_id is None else (bos_token_id,)
        self.stats = EncodingStats()
        # on an accelerator, cached prefixes wait in host memory (offloaded) and are copied back when reused
        self.store_device = torch.device("cpu")

    def prefix_slots(self, plan: ChunkPlan) -> int:
        return len(self.bos) + max(len(c) for c in plan.chunks)

    def encode(
        self, plan: ChunkPlan, *, extra_slots: int, batch_tokens: int, candidate: bool, progress: bool
    ) -> tuple[SequenceBatch, torch.Tensor]:
        """The chunk batch with ``d`` appended (room for ``extra_slots`` more tokens per row) and the
        logits ``[chunks, vocab]`` at each chunk's candidate position."""
        prefixes = [self.bos + chunk for chunk in plan.chunks]
        width = self.prefix_slots(plan)
        d = torch.tensor(plan.dynamic_prompt, device=self.runner.device)
        batch = SequenceBatch(self.runner, rows=len(prefixes), capacity=width + len(d) + extra_slots)
        batch.kv.skip(width)
        batch.next_positions = torch.tensor([len(p) for p in prefixes], device=self.runner.device)

        keys = [prefix_key(p, self.runner.dtype) for p in prefixes]
        missing = []
        for row, key in enumerate(keys):
            entry = self.prefix_cache.get(key)
            if entry is None:
                missing.append(row)
            else:
                batch.kv.write_prefix(row, entry.keys, entry.values)
        self.stats.add(reused=len(prefixes) - len(missing))
        self._encode_missing(batch, prefixes, keys, missing, batch_tokens, progress)
        logits = batch.append(d, candidate_last=candidate, max_batch_tokens=batch_tokens)
        return batch, logits

    def _encode_missing(
        self, batch: SequenceBatch, prefixes: list[tuple[int, ...]], keys: list[str], missing: list[int],
        batch_tokens: int, progress: bool,
    ) -> None:
        rows_per_step = max(1, batch_tokens // batch.kv.length)
        with tqdm(total=len(missing), desc="encoding chunks", unit="chunk", disable=not progress) as bar:
            for start in range(0, len(missing), rows_per_step):
                began = time.perf_counter()
                rows = missing[start : start + rows_per_step]
                group = SequenceBatch(self.runner, rows=len(rows), capacity=max(len(prefixes[r]) for r in rows))
                group.start_padded([prefixes[r] for r in rows])
                for i, row in enumerate(rows):
                    k, v = group.kv.read_prefix(i)
                    batch.kv.write_prefix(row, k, v)
                    self.prefix_cache.put(keys[row], PrefixKV(k.to(self.store_device), v.to(self.store_device)))
                self.stats.add(encoded=len(rows), tokens=sum(len(prefixes[r]) for r in rows),
                               seconds=time.perf_counter() - began)
                bar.update(len(rows))
