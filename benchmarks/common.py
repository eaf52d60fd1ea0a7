"""Shared helpers for the benchmarks: machine facts, the measured matmul rate, FLOP counts, results."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers

from focus_core import FocusEngine

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def matmul_rate(dtype: torch.dtype, tokens: int = 8192, hidden: int = 576, inner: int = 1536) -> float:
    """Measured FLOP/s of a model-shaped matmul ([tokens, hidden] x [hidden, inner]) in ``dtype``."""
    a, b = torch.randn(tokens, hidden, dtype=dtype), torch.randn(hidden, inner, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * tokens * hidden * inner * reps / (time.perf_counter() - start)


def non_embedding_params(model) -> int:
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    skip = {embed.data_ptr()} | ({head.weight.data_ptr()} if head is not None else set())
    return sum(p.numel() for p in model.parameters() if p.data_ptr() not in skip)


def forward_flops(model, chunk_lengths: list[int]) -> float:
    """FLOPs of running sequences of the given lengths: 2 x params x tokens + causal attention."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = sum(2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * t * t for t in chunk_lengths)
    return 2 * non_embedding_params(model) * sum(chunk_lengths) + attention


def result_header(benchmark: str, engine: FocusEngine | None = None) -> dict:
    """What every result file opens with: the benchmark, when and where it ran and, given the engine,
    on which model, dtype and settings."""
    header = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    if engine is not None:
        header |= {
            "model": engine.model_name,
            "dtype": str(engine.runner.dtype),
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
