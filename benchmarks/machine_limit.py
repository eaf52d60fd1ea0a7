"""This machine's limit and how close chunk encoding comes to it, measured in one run:

- the matmul rate (FLOP/s) of the model's MLP shape ([tokens, hidden] x [hidden, intermediate]) in the
  engine's dtype on its device, before and after encoding (the higher is the limit);
- the matmul-limited encode rate: that rate / (2 x non-embedding parameters) tokens/s, what encoding
  would reach if every FLOP were such a matmul (attention not counted);
- the engine's chunk-encode rate (tokens/s, cold prefix cache) over ``--tokens`` of prose, with the
  native window set to 2K so that it chunks, and its fraction of the matmul-limited rate.

    python -m benchmarks.machine_limit --tokens 8192 [--dtype auto] [--device cpu] [--results DIR]

Writes ``<results>/machine_limit.json`` (default ``benchmarks/results``); its header names the CPU
(model name and the flags that decide its speed), the dtype and why it was chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from focus_core import FocusConfig, FocusEngine

from .common import RESULTS, model_matmul_rate, non_embedding_params, result_header, write_json
from .speed import CHUNKED_WINDOW, focus_point


def run_machine_limit(engine: FocusEngine, tokens: int) -> dict:
    chunked = FocusEngine(engine.model, engine.tokenizer, engine.config.replace(native_window=CHUNKED_WINDOW))
    focus_point(chunked, min(tokens, 2 * CHUNKED_WINDOW), new_tokens=1)  # warm-up
    shape_tokens = engine.config.encode_batch_tokens  # the rows of one encoding micro-batch
    before = model_matmul_rate(engine.model, shape_tokens)
    point = focus_point(chunked, tokens, new_tokens=1)
    after = model_matmul_rate(engine.model, shape_tokens)
    params = non_embedding_params(engine.model)
    limited = max(before, after) / (2 * params)
    return {
        "tokens": point["tokens"],
        "non_embedding_params": params,
        "matmul_flops_per_s": {"before": before, "after": after},
        "matmul_limited_tokens_per_s": limited,
        "encode_tokens_per_s": point["encode_tokens_per_s"],
        "encode_fraction_of_matmul_limit": point["encode_tokens_per_s"] / limited,
        "encode_flops_per_s": point["encode_flops_per_s"],  # attention included
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2)")
    parser.add_argument("--tokens", type=int, default=8192, help="prose tokens to encode")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for machine_limit.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = FocusConfig(progress=False)
    engine = FocusEngine.from_pretrained(args.model, config, dtype=args.dtype, device=args.device, progress=False)
    out = run_machine_limit(engine, args.tokens)
    result = {**result_header("machine_limit", engine), **out}
    print(f"wrote {write_json(args.results / 'machine_limit.json', result)}")
    cpu = result["machine"]["cpu"]
    print(
        f"{cpu['name']} ({', '.join(cpu['flags'] or ['flags unknown'])}), {engine.model.focus_precision_reason}: "
        f"matmul {max(out['matmul_flops_per_s'].values()) / 1e9:.0f} GFLOP/s -> "
        f"{out['matmul_limited_tokens_per_s']:.0f} tokens/s matmul-limited; encode "
        f"{out['encode_tokens_per_s']:.0f} tokens/s = {100 * out['encode_fraction_of_matmul_limit']:.0f}%"
    )
    return result


if __name__ == "__main__":
    main()
