"""Chunk-parallel FocusLLM across processes (docs/design.md, "Distribution"), over ``torch.distributed``.

Every process runs the same call on the same prompt; each holds a contiguous share of the chunks (and
their prefix caches) and encodes and scores only those. The relevance scores are gathered, the chosen
chunks' prefix KV is sent by the processes holding them, and every process then decodes the same small
state; the token sampled on rank 0 is broadcast so that all stay in lockstep. Launch with ``torchrun`` /
``accelerate launch``: gloo on CPU, NCCL on GPU.

Sharding is never implicit: an engine shards only when built with ``group=`` (a :class:`ChunkGroup`, or a
``torch.distributed`` process group); the CLI passes :func:`launched_group` when run under a launcher.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from .errors import FocusConfigError
from .kv_cache import PrefixKV


class ChunkGroup:
    """The processes sharing one prompt's chunks, and the few collectives the engine needs."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        """``group``: the processes to shard over; ``None`` is the default (world) process group."""
        if not (dist.is_available() and dist.is_initialized()):
            raise FocusConfigError("a ChunkGroup needs torch.distributed initialised (init_process_group) first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # NCCL moves CUDA tensors only; gloo moves CPU tensors
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else torch.device("cpu")
        )

    @classmethod
    def of(cls, group: ChunkGroup | dist.ProcessGroup | None) -> ChunkGroup | None:
        """``group`` as a :class:`ChunkGroup`; ``None`` (no sharding) stays ``None``."""
        if group is None or isinstance(group, ChunkGroup):
            return group
        if isinstance(group, dist.ProcessGroup):
            return cls(group)
        raise FocusConfigError(f"group must be a ChunkGroup or a torch.distributed ProcessGroup, got {group!r}")

    def sizes(self, n: int) -> list[int]:
        """How many of ``n`` chunks each rank holds (contiguous blocks, the first ranks one more)."""
        return [n // self.world + (r < n % self.world) for r in range(self.world)]

    def share(self, n: int) -> slice:
        """This rank's chunks among ``n``."""
        sizes = self.sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's ``rows`` (its share of ``n``, along dim 0) concatenated in rank order, on all ranks."""
        sizes = self.sizes(n)
        wire = torch.float32 if rows.dtype in (torch.bfloat16, torch.float16) else rows.dtype  # exact round trip
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]), dtype=wire, device=self.device)
        padded[: rows.shape[0]] = rows.to(self.device, wire)
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded, group=self.group)
        return torch.cat([g[:s] for g, s in zip(gathered, sizes)]).to(rows.device, rows.dtype)

    def owner(self, index: int, n: int) -> int:
        """The rank holding chunk ``index`` of ``n``."""
        ends = itertools.accumulate(self.sizes(n))
        return next(rank for rank, end in enumerate(ends) if index < end)

    def exchange_prefixes(
        self,
        kept: dict[int, PrefixKV],
        chosen: Sequence[int],
        n: int,
        shape: Callable[[int], tuple[int, ...]],
        dtype: torch.dtype,
    ) -> list[PrefixKV]:
        """The prefix KV of the ``chosen`` chunks among ``n`` (``shape(i)`` each), on every rank, each sent
        by the rank holding it; ``kept``: this rank's prefixes, by index within its share."""
        offset = self.share(n).start
        return [self.broadcast_prefix(kept.get(i - offset), self.owner(i, n), shape(i), dtype) for i in chosen]

    def broadcast_prefix(
        self, prefix: PrefixKV | None, owner: int, shape: tuple[int, ...], dtype: torch.dtype
    ) -> PrefixKV:
        """A chunk's prefix KV (``shape`` each), sent by the rank ``owner`` that holds it, on every rank
        (in host memory, where prefixes are kept)."""
        parts = []
        for name in ("keys", "values"):
            wire = torch.empty(shape, dtype=torch.float32, device=self.device)  # exact round trip; gloo has no bf16
            if self.rank == owner:
                wire.copy_(getattr(prefix, name))
            dist.broadcast(wire, src=dist.get_global_rank(self.group, owner) if self.group else owner, group=self.group)
            parts.append(wire.to("cpu", dtype))
        return PrefixKV(*parts)

    def broadcast_token(self, token: int) -> int:
        """Rank 0's token, on every rank."""
        t = torch.tensor([token], dtype=torch.long, device=self.device)
        dist.broadcast(t, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        return int(t)


def launched_group() -> ChunkGroup | None:
    """The group of the processes a launcher (``torchrun``, ``accelerate launch``) started, joined now
    (NCCL when CUDA is available, gloo otherwise); ``None`` for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return ChunkGroup()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
