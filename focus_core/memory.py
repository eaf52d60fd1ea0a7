"""Memory planning: how many bytes an input will need, and how many the device can give.

Inputs are refused with :class:`MemoryBudgetError` before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

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
    """A KV buffer: ``rows`` sequences of ``slots`` token slots, keys and values of every layer, or of
    ``layers`` of them (an early-exit pass holds the first ``layers``; a stored prefix, its sliding-window
    layers apart). ``windowed`` of those layers hold only ``window_slots`` slots (sliding-window attention
    in a sequence appended to piece by piece)."""

    rows: int
    slots: int
    layers: int | None = None
    windowed: int = 0
    window_slots: int = 0

    def nbytes(self, bytes_per_token: int, num_layers: int) -> int:
        """Bytes held, given the model's KV bytes per token over all its ``num_layers`` layers."""
        held = num_layers if self.layers is None else self.layers
        layer_slots = (held - self.windowed) * self.slots + self.windowed * min(self.window_slots, self.slots)
        return self.rows * layer_slots * bytes_per_token // num_layers


@dataclass(frozen=True)
class Windows:
    """A model's sliding-window ``layers`` (indices) as a sequence appended ``forward_tokens`` at a time
    holds them (:class:`~focus_core.kv_cache.KVBuffer`): the last ``window - 1`` slots and the new ones."""

    layers: tuple[int, ...] = ()
    window: int = 0
    forward_tokens: int = 0

    def kept_slots(self, slots: int) -> int | None:
        """The slots each of ``layers`` keeps in a sequence of ``slots``; None where that saves nothing."""
        kept = self.window - 1 + self.forward_tokens
        return kept if self.layers and kept < slots else None

    def sequence(self, slots: int) -> KVBlock:
        """One sequence of ``slots`` slots."""
        kept = self.kept_slots(slots)
        if kept is None:
            return KVBlock(1, slots)
        return KVBlock(1, slots, windowed=len(self.layers), window_slots=kept)


@dataclass(frozen=True)
class Forward:
    """The shape of one forward: ``rows`` sequences of ``new`` tokens attending to ``context`` slots."""

    rows: int
    new: int
    context: int


@dataclass(frozen=True)
class Layout:
    """The KV buffers one call allocates and the forwards it runs, stage by stage (docs/design.md, "Memory
    plan").

    The single declaration of those shapes: the encoder and the decoding states allocate their buffers
    from it, and :func:`estimate` adds it up.
    """

    state: tuple[KVBlock, ...]  # the decoding state, held until the last token
    first_pass: Forward  # decoding's first forward (the prompt, or what reads the chosen chunks)
    encode: KVBlock | None = None  # one micro-batch of chunk prefixes being encoded
    score: KVBlock | None = None  # the same prefixes with the dynamic prompt appended (relevance)
    kept: KVBlock | None = None  # the best prefixes so far, held through the parallel pass
    step: KVBlock | None = None  # rebuilt at every decoding step (kv: the local pass)
    encode_pass: Forward | None = None  # one micro-batch of the parallel pass
    prompt_logits: int = 0  # rows of fp32 vocabulary logits the scoring holds (the dynamic prompt's)
    cached: tuple[KVBlock, ...] = ()  # the prefixes this process may add to the (host) prefix cache


class ModelSizes(Protocol):
    """What :func:`estimate` needs to know of a model (a :class:`~focus_core.runner.ModelRunner`)."""

    num_layers: int
    vocab_size: int

    def kv_bytes_per_token(self) -> int: ...

    def activation_bytes(self, rows: int, new_tokens: int, kv_len: int) -> int: ...


def estimate(layout: Layout, model: ModelSizes, *, prefix_cache_bytes: int, host_cache: bool) -> MemoryEstimate:
    """Peak bytes of one call: the decoding state's KV, the largest transient allocation (a micro-batch of
    the parallel pass, or decoding's first forward) beside the prefixes kept, and what the prefix cache
    may grow by (``host_cache``: counted only where the cache's host memory is the budget's memory)."""
    per_token, layers = model.kv_bytes_per_token(), model.num_layers

    def nbytes(block: KVBlock | None) -> int:
        return block.nbytes(per_token, layers) if block is not None else 0

    def activations(forward: Forward) -> int:
        return model.activation_bytes(forward.rows, forward.new, forward.context)

    state = sum(nbytes(block) for block in layout.state)
    first_pass = activations(layout.first_pass) + nbytes(layout.step)
    if layout.encode_pass is None:  # the prompt fits: one forward over it
        return MemoryEstimate(state, first_pass, 0)
    scoring = (
        nbytes(layout.encode)
        + nbytes(layout.score)
        + activations(layout.encode_pass)
        + layout.prompt_logits * model.vocab_size * 4
    )
    cache = min(sum(nbytes(block) for block in layout.cached), prefix_cache_bytes) if host_cache else 0
    return MemoryEstimate(state, nbytes(layout.kept) + max(scoring, first_pass), cache)


def one_sequence(slots: int, read: int, windows: Windows, context: int | None = None, **parallel: Any) -> Layout:
    """Decoding over one sequence of ``slots`` slots whose first forward reads ``read`` tokens,
    ``windows.forward_tokens`` at a time, against ``context`` slots (default: all of them); ``parallel``:
    the buffers of a parallel pass before it (:func:`parallel_buffers`)."""
    first_pass = Forward(1, min(read, windows.forward_tokens), slots if context is None else context)
    return Layout(state=(windows.sequence(slots),), first_pass=first_pass, **parallel)


def parallel_buffers(
    *,
    chunks: int,
    prefix_slots: int,
    dynamic_prompt: int,
    read: int,
    batch_tokens: int,
    cached: tuple[KVBlock, ...],
    exit_layers: int | None = None,
) -> dict[str, Any]:
    """The :class:`Layout` fields of a parallel pass over ``chunks`` chunks (this process's), each
    ``[BOS] + chunk`` in at most ``prefix_slots`` slots, encoded ``batch_tokens`` at a time through every
    layer or the first ``exit_layers``, with the dynamic prompt appended for scoring; ``read`` prefixes
    are kept for decoding and ``cached`` is what the prefix cache stores of them. Each mode adds the
    decoding state it starts (:meth:`~focus_core.modes.Mode.layout`)."""
    group = max(1, min(chunks, batch_tokens // prefix_slots))  # chunks per micro-batch
    return {
        "encode": KVBlock(group, prefix_slots, exit_layers),
        "score": KVBlock(group, prefix_slots + dynamic_prompt, exit_layers),
        "kept": KVBlock(read, prefix_slots),
        "encode_pass": Forward(group, prefix_slots, prefix_slots),
        "prompt_logits": 2 * dynamic_prompt,  # the dynamic prompt's after every prefix, and its baseline
        "cached": cached,
    }


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
