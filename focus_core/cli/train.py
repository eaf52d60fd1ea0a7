"""``focusllm train``: train candidate projections into an adapter (experimental; needs the ``train``
extra, imported only when this command runs)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..loading import load_model
from ..settings import add_options, option_values
from ..training.config import TrainingConfig
from .options import add_model_options, say


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train candidate projections (an adapter for kv aggregation; experimental)",
        description="Train candidate projections for kv aggregation into an adapter directory. "
        "Experimental: needs pip install 'focusllm-integrations[train]' (accelerate).",
    )
    train.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="text files, folders (read recursively) or JSONL files with a 'text' field",
    )
    train.add_argument("--output", required=True, type=Path, help="adapter directory (checkpoints go inside)")
    add_options(train, TrainingConfig, [f.name for f in dataclasses.fields(TrainingConfig)])
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    add_model_options(train)
    train.set_defaults(run=run, settings=TrainingConfig)


def run(args: argparse.Namespace) -> int:
    from ..training import TokenStream, read_documents, train  # accelerate (the train extra) only here

    config = TrainingConfig(**option_values(TrainingConfig, args))
    model, tokenizer = load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        gguf_file=args.gguf_file,
        progress=False if args.quiet else None,
    )
    stream = TokenStream(tokenizer, read_documents(args.data))
    say(f"training text: {len(stream.train)} tokens, held out: {len(stream.eval)}")
    state = train(
        model, tokenizer, stream, args.output, config, resume=args.resume, progress=False if args.quiet else None
    )
    evals = state["evaluations"]
    say(
        f"adapter written to {args.output}: {state['step']} steps, {state['tokens']} tokens, "
        f"{state['seconds']:.0f} s; held-out loss {evals[0]['loss']:.4f} -> {evals[-1]['loss']:.4f}"
    )
    return 0
