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
