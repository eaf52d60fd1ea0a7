"""Shared helpers for the benchmarks: machine facts, the measured matmul rate, FLOP counts, results."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers
from transformers.generation.streamers import BaseStreamer

from focus_core import FocusEngine
from focus_core.precision import cpu_summary

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """Where a result was measured: the CPU (model name and the flags that decide its speed: avx2,
    avx512f, avx512_bf16, amx_bf16, Arm bf16), cores, versions, the GPU if any."""
    return {
        "cpu": cpu_summary(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def matmul_rate(
    dtype: torch.dtype, tokens: int = 8192, hidden: int = 576, inner: int = 1536, device: torch.device | str = "cpu"
) -> float:
    """Measured FLOP/s of a model-shaped matmul ([tokens, hidden] x [hidden, inner]) in ``dtype`` on ``device``."""
    device = torch.device(device)
    a = torch.randn(tokens, hidden, dtype=dtype, device=device)
    b = torch.randn(hidden, inner, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * tokens * hidden * inner * reps / (time.perf_counter() - start)


def model_matmul_rate(model, tokens: int = 8192) -> float:
    """:func:`matmul_rate` in the model's dtype, on its device, of its MLP's shape ([tokens, hidden] x
    [hidden, intermediate]): the rate its forward would reach if it were all matmul."""
    cfg, weight = model.config.get_text_config(), next(model.parameters())
    inner = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    return matmul_rate(weight.dtype, tokens, cfg.hidden_size, inner, weight.device)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting :func:`peak_memory` afresh (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA ``device`` since :func:`reset_peak_memory`; ``None`` elsewhere."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


class PeakMemory:
    """The peak memory a block of work adds on ``device`` (``with PeakMemory(device) as peak: ...``, then
    ``peak.bytes``): CUDA's peak allocation above the start, or on Linux the process's peak resident set
    (VmHWM, reset through ``/proc/self/clear_refs`` after freed heap is handed back with ``malloc_trim``)
    above its resident set at the start. ``None`` where neither can be read."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self._start = device, None, None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            reset_peak_memory(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif _STATUS.exists():
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                Path("/proc/self/clear_refs").write_text("5")
                self._start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        peak = peak_memory(self.device) if self.device.type == "cuda" else _status_bytes("VmHWM")
        self.bytes = max(0, peak - self._start)


_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    line = next(x for x in _STATUS.read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def non_embedding_params(model) -> int:
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    skip = {embed.data_ptr()} | ({head.weight.data_ptr()} if head is not None else set())
    return sum(p.numel() for p in model.parameters() if p.data_ptr() not in skip)


def forward_flops(model, chunk_lengths: list[int], layers: int | None = None) -> float:
    """FLOPs of running sequences of the given lengths through ``layers`` of the model's layers (default:
    all; an early exit runs fewer): 2 x their params x tokens + causal attention."""
    cfg = model.config.get_text_config()
    share = 1.0 if layers is None else layers / cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = sum(2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * t * t for t in chunk_lengths)
    return share * (2 * non_embedding_params(model) * sum(chunk_lengths) + attention)


class Clock(BaseStreamer):
    """A ``generate`` streamer that notes when each piece arrives: first the prompt, then each new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def rate(self) -> float:
        """Tokens/s after the first new token."""
        return (len(self.times) - 2) / (self.times[-1] - self.times[1])


def read_whole(engine: FocusEngine) -> dict:
    """The per-call setting that reads every prompt fitting ``engine``'s window whole, as the model would."""
    return {"read_whole_tokens": engine.native_window}


def result_header(benchmark: str, engine: FocusEngine | None = None) -> dict:
    """What every result file opens with: the benchmark, when and where it ran (CPU model and flags,
    GPU) and, given the engine, on which model, device, dtype (and why it was chosen) and settings."""
    header = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    if engine is not None:
        header |= {
            "model": engine.model_name,
            "device": str(engine.runner.device),
            "dtype": str(engine.runner.dtype),
            "precision": getattr(engine.model, "focus_precision_reason", "as the model was given"),
            "native_window": engine.native_window,
            "engine_config": dataclasses.asdict(engine.config),
        }
    return header


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` atomically: an interrupted run leaves the last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    partial.replace(path)
    return path


def write_result(name: str, payload: dict, engine: FocusEngine | None = None) -> Path:
    """``results/<name>.json``: the header, then ``payload``."""
    path = write_json(RESULTS / f"{name}.json", {**result_header(name, engine), **payload})
    print(f"wrote {path}")
    return path


def add_one_stage(parser: argparse.ArgumentParser) -> None:
    """``--one-stage``: ``select`` without its cascade, for a before-and-after on one machine."""
    parser.add_argument("--one-stage", action="store_true", help="select without its cascade (select_cascade=None)")


def one_stage_settings(args: argparse.Namespace) -> dict:
    """The FocusConfig settings ``--one-stage`` asks for (none without it)."""
    return {"select_cascade": None} if args.one_stage else {}
