"""What the commands share: the model options, the engine options (generated from FocusConfig's
declarations), the engine they build, and how they print."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import FocusConfig
from ..distributed import is_main_process, launched_group
from ..engine import FocusEngine
from ..errors import FocusError
from ..settings import add_options, option_values

EXIT_USAGE = 2  # argparse's status for bad options; every user error here uses it too
# FocusConfig settings a command takes as options; stop has per-command rules and progress is --quiet
ENGINE_OPTIONS = tuple(f.name for f in dataclasses.fields(FocusConfig) if f.name not in ("stop", "progress"))


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="Hugging Face model folder, hub id (looked up in the local Hugging Face cache first; "
        "downloaded only if not there and HF_HUB_OFFLINE is unset) or .gguf file "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--gguf-file",
        default=None,
        metavar="FILE",
        help="load this GGUF file from the --model folder or hub repo (dequantized by transformers "
        "at every load), e.g. --model ./models --gguf-file smollm2.Q4_K_M.gguf",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
        metavar="DTYPE",
        help="auto | float32 | bfloat16 | float16 (default: auto, the fastest the device runs natively: "
        "bf16 on CUDA and on CPUs with bf16 instructions, else fp32 on CPU; --verbose says which and why)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are drawn only on a terminal anyway)")


def add_engine_options(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """The model options, ``--adapter`` and an option for every FocusConfig setting (``defaults``: where
    the command's differ from FocusConfig's, each with its reason where the command is defined)."""
    add_model_options(p)
    p.add_argument(
        "--adapter",
        default=None,
        type=Path,
        metavar="DIR",
        help="trained candidate projections (from `focusllm train`); makes auto aggregation kv",
    )
    add_options(p, FocusConfig, ENGINE_OPTIONS, defaults)


def config_from(args: argparse.Namespace, **fixed: Any) -> FocusConfig:
    """The FocusConfig the options ask for, with ``fixed`` settings on top."""
    values = {**option_values(FocusConfig, args), **fixed}
    values["progress"] = False if args.quiet or not is_main_process() else None
    return FocusConfig(**values)


def engine_from(args: argparse.Namespace, config: FocusConfig) -> FocusEngine:
    """The engine the model options ask for; under torchrun, the chunks shard over the launched processes."""
    group = launched_group()
    device = args.device
    if device is None and dist.is_initialized() and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    return FocusEngine.from_pretrained(
        args.model,
        config,
        adapter=args.adapter,
        dtype=args.dtype,
        device=device,
        gguf_file=args.gguf_file,
        progress=False if args.quiet else None,
        group=group,
    )


def say(line: str) -> None:
    """Print on the main process only (every process of a torchrun job runs the same loop)."""
    if is_main_process():
        print(line, flush=True)


def log(args: argparse.Namespace, line: str) -> None:
    """A --verbose line on stderr (main process only)."""
    if getattr(args, "verbose", False) and is_main_process():
        print(f"focusllm: {line}", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FocusError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text
