"""Dynamic condensing, batched: every ``[BOS] + m_i + d`` through the model, a micro-batch at a time.

The prefixes ``[BOS] + m_i`` do not depend on the question, so their KV is looked up in the
content-addressed :class:`PrefixCache` first; only the missing ones are run, batched. Cached prefixes
live in host memory, so on a GPU they do not take device memory. The dynamic prompt ``d`` then runs
after each micro-batch of prefixes and scores them (:mod:`.relevance`); only the best-scoring prefixes
are kept for decoding, which then runs ``d`` once more over just those.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields

import torch
from tqdm.auto import tqdm

from .chunking import ChunkPlan
from .kv_cache import PrefixCache, PrefixKV, prefix_key
from .memory import Layout
from .relevance import top_indices
from .runner import ModelRunner, SequenceBatch
from .selection import SINK_TOKENS

READS_REMEMBERED = 8  # the most recent reads a new one looks through for a shared start


def shared_start(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many tokens ``a`` and ``b`` share from their start."""
    n = min(len(a), len(b))
    differ = (torch.tensor(a[:n]) != torch.tensor(b[:n])).nonzero()
    return int(differ[0, 0]) if len(differ) else n


@dataclass
class EncodingStats:
    """Counters for what the encoder actually computed (thread-safe increments)."""

    chunks_encoded: int = 0
    tokens_encoded: int = 0
    chunks_reused: int = 0
    reads_reused: int = 0  # select's reads of a selection started from an earlier read in the prefix cache
    read_tokens_reused: int = 0  # the tokens of those reads whose KV came from the cache
    encode_seconds: float = 0.0  # wall time spent encoding chunk prefixes
    attend_seconds: float = 0.0  # wall time of the question's rows over encoded prefixes (select's early exit)
    read_seconds: float = 0.0  # wall time of select's reads of its selection (what was not reused)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(
        self,
        *,
        encoded: int = 0,
        tokens: int = 0,
        reused: int = 0,
        reads_reused: int = 0,
        read_tokens_reused: int = 0,
        seconds: float = 0.0,
        attend_seconds: float = 0.0,
        read_seconds: float = 0.0,
    ) -> None:
        with self._lock:
            self.chunks_encoded += encoded
            self.tokens_encoded += tokens
            self.chunks_reused += reused
            self.reads_reused += reads_reused
            self.read_tokens_reused += read_tokens_reused
            self.encode_seconds += seconds
            self.attend_seconds += attend_seconds
            self.read_seconds += read_seconds

    def counts(self) -> dict[str, float]:
        """Every counter by name, read together (``after - before`` per name gives what one call did)."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass
class ScoredChunks:
    """The result of the scoring pass over a plan's chunks.

    ``loglik[i]``: summed log-probability of the dynamic prompt's tokens after chunk ``i``;
    ``kept``: the prefix KV of the best-scoring chunks (at most ``keep`` of them), by chunk index.
    """

    loglik: torch.Tensor  # [chunks] fp32
    kept: dict[int, PrefixKV]


class ChunkEncoder:
    """Encodes chunk prefixes (cached or batched), scores them against the dynamic prompt, and builds
    the chunk batches that decoding runs."""

    def __init__(self, runner: ModelRunner, prefix_cache: PrefixCache, bos_token_id: int | None):
        self.runner = runner
        self.prefix_cache = prefix_cache
        self.bos = () if bos_token_id is None else (bos_token_id,)
        self.stats = EncodingStats()
        # on an accelerator, cached prefixes wait in host memory (offloaded) and are copied back when reused
        self.store_device = torch.device("cpu")
        self._reads: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # reads put in the prefix cache, by key
        self._reads_lock = threading.Lock()

    def score(
        self, plan: ChunkPlan, *, keep: int, layout: Layout, progress: bool, pinned: tuple[int, ...] = ()
    ) -> ScoredChunks:
        """Run ``[BOS] + m_i + d`` for every chunk, a micro-batch at a time (``layout.encode`` and
        ``layout.score`` size the buffers), and keep only the prefix KV of the ``pinned`` and the
        best-scoring chunks, ``keep`` in all: memory beyond the prefix cache does not grow with the prompt."""
        loglik = torch.empty(len(plan.chunks))
        kept: dict[int, PrefixKV] = {}
        if not plan.chunks:  # a process of a group that holds none
            return ScoredChunks(loglik, kept)
        d = torch.tensor(plan.dynamic_prompt, device=self.runner.device)
        rows_per_step = layout.score.rows
        with tqdm(total=len(plan.chunks), desc="reading chunks", unit="chunk", disable=not progress) as bar:
            for start in range(0, len(plan.chunks), rows_per_step):
                rows = list(range(start, min(start + rows_per_step, len(plan.chunks))))
                prefixes = self.prefixes([self.bos + plan.chunks[i] for i in rows], slots=layout.encode.slots)
                batch = self.batch(prefixes, slots=layout.score.slots, extra_slots=len(d))
                loglik[rows] = batch.append(d, loglik=True)[1].cpu()  # scores live on the host
                kept.update(zip(rows, prefixes))
                for i in set(kept) - set(top_indices(loglik, list(kept), keep, pinned)):
                    del kept[i]
                bar.update(len(rows))
        return ScoredChunks(loglik, kept)

    def attend(
        self, plan: ChunkPlan, *, layers: tuple[int, ...], rows: tuple[int, int], layout: Layout, progress: bool
    ) -> dict[int, torch.Tensor]:
        """The early-exit pass: ``[BOS] + m_i`` (cached, or run through the layers up to ``max(layers)``
        only) then ``d`` after it, a micro-batch at a time. Returns, per layer of ``layers``, the attention
        mass ``[chunks, queries, C]`` (fp32, on the host) that each of ``d``'s tokens ``rows`` =
        ``[start, end)`` pays to each token of each chunk (C: the longest chunk; a shorter chunk's mass is
        right-padded with 0), 0 for the first tokens of each chunk (attention sinks). Nothing is kept but
        the prefix cache's copies."""
        queries, width = rows[1] - rows[0], max((len(c) for c in plan.chunks), default=0)
        masses = {layer: torch.zeros(len(plan.chunks), queries, width) for layer in layers}
        if not plan.chunks:
            return masses
        d = torch.tensor(plan.dynamic_prompt, device=self.runner.device)
        slots = layout.score.slots - len(d)  # slots of the prefixes, right-aligned
        with tqdm(total=len(plan.chunks), desc="reading chunks", unit="chunk", disable=not progress) as bar:
            for start in range(0, len(plan.chunks), layout.score.rows):
                chunks = plan.chunks[start : start + layout.score.rows]
                prefixes = self.prefixes(
                    [self.bos + c for c in chunks], slots=layout.encode.slots, layers=max(layers) + 1
                )
                began = time.perf_counter()
                batch = self.batch(prefixes, slots=layout.score.slots, extra_slots=len(d))
                for layer, mass in batch.attend(d, layers=layers, rows=rows).items():  # [batch, queries, slots]
                    mass = mass[:, :, :slots].cpu()  # one move to the host per micro-batch
                    for i, c in enumerate(chunks):
                        masses[layer][start + i, :, : len(c)] = mass[i, :, slots - len(c) :]
                self.stats.add(attend_seconds=time.perf_counter() - began)
                bar.update(len(chunks))
        for mass in masses.values():
            mass[:, :, :SINK_TOKENS] = 0  # attention sinks (selection.SINK_TOKENS)
        return masses

    def baseline(self, dynamic_prompt: tuple[int, ...]) -> float:
        """``log p(d[1:] | [BOS] + d[0])``: how well the dynamic prompt is predicted with no chunk."""
        batch = SequenceBatch(self.runner, rows=1, capacity=len(self.bos) + len(dynamic_prompt))
        if self.bos:
            batch.append(torch.tensor(self.bos, device=self.runner.device))
        return float(batch.append(torch.tensor(dynamic_prompt, device=self.runner.device), loglik=True)[1][0])

    def prefixes(
        self, sequences: list[tuple[int, ...]], slots: int | None = None, layers: int | None = None
    ) -> list[PrefixKV]:
        """The prefix KV of each ``[BOS] + chunk``: from the cache, or encoded in one batch (of ``slots``
        slots per row; default: the longest) and cached. ``layers``: only the first ``layers`` layers
        (an early exit; default: all)."""
        keys = [prefix_key(s, self.runner.dtype, layers) for s in sequences]
        entries = [self.prefix_cache.get(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.stats.add(reused=len(sequences) - len(missing))
        if missing:
            began = time.perf_counter()
            longest = max(len(sequences[i]) for i in missing)
            group = SequenceBatch(self.runner, rows=len(missing), capacity=slots or longest)
            exit_layer = None if layers is None else layers - 1
            group.start_padded([sequences[i] for i in missing], exit_layer=exit_layer)
            for row, i in enumerate(missing):
                entries[i] = self.keep(keys[i], *group.kv.read_prefix(row))
            self.stats.add(
                encoded=len(missing),
                tokens=sum(len(sequences[i]) for i in missing),
                seconds=time.perf_counter() - began,
            )
        return entries

    def keep(self, key: str, keys: torch.Tensor, values: torch.Tensor) -> PrefixKV:
        """``keys`` and ``values`` ``[layers, kv_heads, tokens, head_dim]`` as a prefix, put in the prefix
        cache under ``key`` (offloaded to the store device) where the cache keeps it."""
        entry = PrefixKV(keys, values, **self.runner.sliding_windows)
        if not self.prefix_cache.keeps(entry):
            return entry
        if keys.device != self.store_device:
            entry = PrefixKV(keys.to(self.store_device), values.to(self.store_device), **self.runner.sliding_windows)
        self.prefix_cache.put(key, entry)
        return entry

    def batch(self, prefixes: list[PrefixKV], *, slots: int, extra_slots: int) -> SequenceBatch:
        """A batch of ``slots`` slots per row: ``prefixes`` right-aligned (left-padded) in the first
        ``slots - extra_slots``, then room for ``extra_slots`` more tokens."""
        batch = SequenceBatch(self.runner, rows=len(prefixes), capacity=slots)
        batch.place(prefixes, width=slots - extra_slots)
        return batch

    def read(self, sequence: SequenceBatch, tokens: tuple[int, ...]) -> int:
        """Start the empty one-row ``sequence`` with ``tokens`` through every layer, and keep their KV in the
        prefix cache. The longest start they share with an earlier read still in the cache comes from it: all
        of them when a second question selects what the first did; the document's opening and the passages
        before the first that differs when it selects otherwise (a causal model's KV of a prefix does not
        depend on what follows). Only the rest is run. Returns how many tokens came from the cache."""
        if sequence.kv.windowed:  # a sequence keeping only its sliding windows holds no whole prefix
            self._run_read(sequence, tokens)
            return 0
        shared, held = self._longest_shared_read(tokens)
        if shared:
            start = held if shared == held.tokens else PrefixKV(held.keys[:, :, :shared], held.values[:, :, :shared])
            sequence.place([start], width=shared)
            self.stats.add(reads_reused=1, read_tokens_reused=shared)
        if shared < len(tokens):
            self._run_read(sequence, tokens[shared:])
            key = prefix_key(tokens, self.runner.dtype)
            if self.prefix_cache.keeps(self.keep(key, *sequence.kv.read_prefix(0))):
                with self._reads_lock:
                    self._reads[key] = tokens
                    self._reads.move_to_end(key)
                    while len(self._reads) > READS_REMEMBERED:
                        self._reads.popitem(last=False)
        return shared

    def _run_read(self, sequence: SequenceBatch, tokens: tuple[int, ...]) -> None:
        """Append ``tokens`` to the one-row ``sequence`` through every layer, timed as a read."""
        began = time.perf_counter()
        sequence.append(torch.tensor(tokens, device=self.runner.device))
        self.stats.add(read_seconds=time.perf_counter() - began)

    def _longest_shared_read(self, tokens: tuple[int, ...]) -> tuple[int, PrefixKV | None]:
        """The earlier read still in the prefix cache that shares the longest start with ``tokens``, and how
        many tokens it shares (0 and ``None`` where none does). A read whose sliding-window layers were
        trimmed to their window (:class:`PrefixKV`) serves only a read of all its tokens; ``[BOS]`` alone
        is not worth a lookup."""
        with self._reads_lock:
            earlier = list(self._reads.items())
        for shared, key in sorted(((shared_start(tokens, t), key) for key, t in earlier), reverse=True):
            held = self.prefix_cache.get(key) if shared > len(self.bos) else None
            if held is not None and (shared == held.tokens or not held.trimmed):
                return shared, held
        return 0, None

    def with_prompt(
        self,
        prefixes: list[PrefixKV],
        dynamic_prompt: tuple[int, ...],
        *,
        slots: int,
        candidate: bool,
        batch_tokens: int,
    ) -> tuple[SequenceBatch, torch.Tensor]:
        """The decoding batch (``slots`` per row): ``prefixes`` with ``d`` appended and room for the new
        tokens after it, and the logits ``[rows, vocab]`` at each row's candidate position."""
        d = torch.tensor(dynamic_prompt, device=self.runner.device)
        longest = max(p.tokens for p in prefixes)
        batch = self.batch(prefixes, slots=slots, extra_slots=slots - longest)
        return batch, batch.append(d, candidate_last=candidate, max_batch_tokens=batch_tokens)
