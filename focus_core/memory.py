"""Memory planning: how many bytes an input will need, and how many the device can give.

Inputs are refused with :class:`MemoryBudgetError` before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import MemoryBudgetError

GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    kv_bytes: int  # KV buffers held for the whole generation
    transient_bytes: int  # largest short-lived allocation (a forward's activations, encode buffers)
    prefix_cache_bytes: int  # what the prefix cache may grow by

    @property
    def total(self) -> int:
        return self.kv_bytes + self.transient_bytes + self.prefix_cache_bytes


@dataclass(frozen=True)
class KVBlock:
    """A KV buffer: ``rows`` sequences of ``slots`` token slots, keys and values of every layer, or of the
    first ``layers`` only (an early-exit pass)."""

    rows: int
    slots: int
    layers: int | None = None

    def nbytes(self, bytes_per_token: int, num_layers: int) -> int:
        """Bytes held, given the model's KV bytes per token over all its ``num_layers`` layers."""
        held = num_layers if self.layers is None else self.layers
        return self.rows * self.slots * bytes_per_token * held // num_layers


@dataclass(frozen=True)
class Layout:
    """The KV buffers one call allocates, stage by stage (docs/design.md, "Memory plan").

    The single declaration of those shapes: the encoder and the decoding states allocate their buffers
    from it, and the memory estimate adds it up.
    """

    state: tuple[KVBlock, ...]  # the decoding state, held until the last token
    encode: KVBlock | None = None  # one micro-batch of chunk prefixes being encoded
    score: KVBlock | None = None  # the same prefixes with the dynamic prompt appended (relevance)
    kept: KVBlock | None = None  # the best prefixes so far, held through the parallel pass
    step: KVBlock | None = None  # rebuilt at every decoding step (kv: the local pass)


def plain_layout(prompt_tokens: int, max_new_tokens: int) -> Layout:
    """A prompt that fits the native window: one sequence."""
    return Layout(state=(KVBlock(1, prompt_tokens + max_new_tokens),))


def chunked_layout(
    mode: str,
    *,
    chunks: int,
    prefix_slots: int,
    read: int,
    read_tokens: int,
    dynamic_prompt: int,
    local: int,
    bos: int,
    max_new_tokens: int,
    batch_tokens: int,
    exit_layers: int | None = None,
) -> Layout:
    """A prompt read in chunks: ``chunks`` held by this process, each ``[BOS] + chunk`` in at most
    ``prefix_slots`` slots; decoding reads ``read`` of them, ``read_tokens`` chunk tokens in all (focus),
    or, in ``select``, ``read_tokens`` document tokens chosen after an early-exit pass through the first
    ``exit_layers`` layers."""
    group = max(1, min(chunks, batch_tokens // prefix_slots))  # chunks per micro-batch
    local_slots = bos + local + max_new_tokens
    if mode == "select":  # the early-exit pass keeps nothing; one sequence reads the selection
        return Layout(
            state=(KVBlock(1, bos + read_tokens + local + max_new_tokens),),
            encode=KVBlock(group, prefix_slots, exit_layers),
            score=KVBlock(group, prefix_slots + dynamic_prompt, exit_layers),
            kept=KVBlock(0, prefix_slots),
        )
    parallel = {
        "encode": KVBlock(group, prefix_slots),
        "score": KVBlock(group, prefix_slots + dynamic_prompt),
        "kept": KVBlock(read, prefix_slots),
    }
    if mode == "focus":  # one sequence: [BOS] + the chosen chunks + local
        return Layout(state=(KVBlock(1, bos + read_tokens + local + max_new_tokens),), **parallel)
    rows = KVBlock(read, prefix_slots + dynamic_prompt + max_new_tokens)  # each chosen chunk decoding
    if mode == "entropy":  # the local context decoded beside them
        return Layout(state=(rows, KVBlock(1, local_slots)), **parallel)
    # kv: the local pass behind the chunks' candidate entries, rebuilt every step (the last one with
    # every new token but the last)
    return Layout(state=(rows,), step=KVBlock(1, read + local + max_new_tokens - 1), **parallel)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: free GPU memory for CUDA, MemAvailable of the host otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(estimate: MemoryEstimate, budget: int, *, what: str, hint: str) -> None:
    if estimate.total > budget:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(estimate.total)} ({estimate.total} bytes: KV cache "
            f"{format_bytes(estimate.kv_bytes)}, transient {format_bytes(estimate.transient_bytes)}, prefix cache "
            f"{format_bytes(estimate.prefix_cache_bytes)}) but the memory budget is {format_bytes(budget)} "
            f"({budget} bytes). {hint}",
            needed_bytes=estimate.total,
            budget_bytes=budget,
        )


def format_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"
