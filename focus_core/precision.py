"""The precision a model runs in by default: the fastest one the device runs natively.

``dtype="auto"`` (and ``None``) picks, on CUDA, bf16 where the GPU computes in it natively (Ampere and
later), else fp16; on CPU, bf16 only where the CPU has bf16 instructions (x86 ``avx512_bf16`` or
``amx_bf16``, Arm ``bf16``), else fp32: without them PyTorch emulates bf16 matmuls, which ran 4x slower
end to end than fp32 on such a CPU. Where the CPU cannot be read (no ``/proc/cpuinfo``: macOS,
Windows), a 256x256 matmul timed in both precisions decides (a few milliseconds, once per process).
On Apple's MPS, fp16. An explicit dtype is always honoured.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .errors import FocusConfigError

CPUINFO = Path("/proc/cpuinfo")
# cpuinfo flags (x86 "flags", Arm "Features") that mean native bf16 arithmetic
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# flags that decide CPU speed, recorded with every benchmark result
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_PROBE_SIZE, _PROBE_REPS = 256, 3


@dataclass(frozen=True)
class PrecisionChoice:
    """A dtype and why it was chosen, e.g. ``bfloat16`` because "auto: the CPU has avx512_bf16"."""

    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"


def choose_precision(dtype: str | torch.dtype | None, device: torch.device) -> PrecisionChoice:
    """``dtype`` as asked for, or for ``"auto"``/``None`` the fastest native precision of ``device``.
    An unknown dtype name is a :class:`FocusConfigError`."""
    if isinstance(dtype, torch.dtype):
        return PrecisionChoice(dtype, "asked for")
    if dtype is None or dtype == "auto":
        return auto_precision(device)
    try:
        return PrecisionChoice(DTYPES[str(dtype).removeprefix("torch.")], "asked for")
    except KeyError:
        raise FocusConfigError(
            f"unsupported dtype {dtype!r}; use auto or one of {sorted(DTYPES)}", setting="dtype"
        ) from None


def auto_precision(device: torch.device) -> PrecisionChoice:
    """The fastest precision ``device`` runs natively (see the module docstring)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return PrecisionChoice(torch.bfloat16, f"auto: {name} computes in bf16")
        return PrecisionChoice(torch.float16, f"auto: {name} has no native bf16")
    if device.type == "mps":
        return PrecisionChoice(torch.float16, "auto: MPS computes in fp16")
    if device.type == "cpu":
        return cpu_precision()
    return PrecisionChoice(torch.float32, f"auto: no native-precision rule for {device.type}")


@cache
def cpu_precision() -> PrecisionChoice:
    """bf16 where the CPU has bf16 instructions, else fp32; timed when the CPU's flags cannot be read."""
    flags = cpu_flags()
    if flags is None:
        bf16, fp32 = matmul_seconds(torch.bfloat16), matmul_seconds(torch.float32)
        measured = f"{_PROBE_SIZE}x{_PROBE_SIZE} matmul {bf16 * 1e3:.2f} ms in bf16, {fp32 * 1e3:.2f} ms in fp32"
        if bf16 < fp32:
            return PrecisionChoice(torch.bfloat16, f"auto: CPU flags unreadable; {measured}")
        return PrecisionChoice(torch.float32, f"auto: CPU flags unreadable; {measured}")
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return PrecisionChoice(torch.bfloat16, f"auto: the CPU has {', '.join(native)}")
    return PrecisionChoice(torch.float32, "auto: the CPU has no bf16 instructions (avx512_bf16, amx_bf16, bf16)")


def cpu_flags() -> frozenset[str] | None:
    """The first CPU's feature flags (x86 ``flags``, Arm ``Features``), or ``None`` where they cannot be read."""
    line = _cpuinfo_field(("flags", "features"))
    return None if line is None else frozenset(line.split())


def cpu_name() -> str:
    """The CPU's model name (``model name`` in cpuinfo), else what :mod:`platform` knows."""
    return _cpuinfo_field(("model name",)) or platform.processor() or platform.machine()


def _cpuinfo_field(keys: tuple[str, ...]) -> str | None:
    """The value of the first line of :data:`CPUINFO` whose key is one of ``keys`` (lower case)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return value.strip()
    return None


def matmul_seconds(dtype: torch.dtype, size: int = _PROBE_SIZE, reps: int = _PROBE_REPS) -> float:
    """The fastest of ``reps`` timed CPU matmuls ``[size, size] @ [size, size]`` in ``dtype`` (after a warm-up)."""
    a = torch.randn(size, size).to(dtype)
    a @ a
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_summary() -> dict:
    """The CPU as benchmark results name it: model name, and which of :data:`SPEED_FLAGS` it has
    (``None``: its flags cannot be read)."""
    flags = cpu_flags()
    return {"name": cpu_name(), "flags": None if flags is None else [f for f in SPEED_FLAGS if f in flags]}
