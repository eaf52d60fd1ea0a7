"""This machine's limit and how close chunk encoding comes to it, measured in one run:

- the matmul rate (FLOP/s) of the model's MLP shape ([tokens, hidden] x [hidden, intermediate]) in the
  engine's dtype on its device, before and after encoding (the higher is the limit);
- the matmul-limited encode rate: that rate / (2 x the non-embedding parameters of the layers the
  encoding pass runs: all, or up to ``select``'s exit layer) tokens/s, what encoding would reach if every
  FLOP were such a matmul (attention not counted);
- the engine's chunk-encode rate (tokens/s, cold prefix cache) over ``--tokens`` of prose, with the
  native window set to 2K so that it chunks, and its fraction of the matmul-limited rate;
- where that encoding spends its time (CPU): the same encoding once more under ``torch.profiler``, shares
  of its wall time in attention (the ``sdpa`` kernel), linear layers (matmuls), other operators (norms,
  activations, rotary, copies) and outside operators, and the fraction of the matmul-limited rate the
  pass would reach with its attention's time taken out;
- the memory bandwidth (bytes/s of a large copy on the device, read and write counted) and the bytes one
  decoded token reads (every weight matrix once, the tied embedding as the output layer, and the KV
  cache of its context): bandwidth / bytes is the memory-limited decode rate;
- the decode rate (tokens/s after the first) of the engine, of the engine over plain ``nn.Linear``
  weights (``focus_core.kernels.unpacked``: what the packed weights bring), of the engine decoding
  through the model's own forward (what ``focus_core.decode_step`` brings) and of ``transformers``' own
  ``generate`` on the same prompt of ``--decode-prompt-tokens`` tokens, ``--decode-tokens`` greedy tokens
  each, and the engine's fraction of the memory-limited rate.

    python -m benchmarks.machine_limit --tokens 8192 [--dtype auto] [--device cpu] [--results DIR]

Writes ``<results>/machine_limit.json`` (default ``benchmarks/results``); its header names the CPU
(model name and the flags that decide its speed), the dtype and why it was chosen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from focus_core import FocusConfig, FocusEngine, kernels

from .common import (
    RESULTS,
    Clock,
    model_matmul_rate,
    non_embedding_params,
    read_whole,
    result_header,
    synchronize,
    write_json,
)
from .haystack import haystack
from .speed import CHUNKED_WINDOW, focus_point

COUNTING = " Counting on: " + ", ".join(str(i) for i in range(1, 9))  # a prompt whose answer does not end


def memory_bandwidth(device: torch.device, nbytes: int = 2**29, reps: int = 10) -> float:
    """Bytes/s of the best of ``reps`` copies of an ``nbytes`` buffer on ``device`` (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def decode_bytes_per_token(engine: FocusEngine, context: int) -> int:
    """Bytes one decoding step reads: every parameter once (the input embedding only where it is also the
    output layer: one row otherwise) and the KV cache of ``context`` tokens."""
    model = engine.model
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not embed)
    return weights + context * engine.runner.kv_bytes_per_token()


def engine_decode(engine: FocusEngine, ids: list[int], new_tokens: int) -> tuple[int, float, float]:
    """Tokens the engine produced reading ``ids`` whole, seconds to its first, and tokens/s after it."""
    start = time.perf_counter()
    stream = engine.stream_ids(ids, max_new_tokens=new_tokens, temperature=0.0, **read_whole(engine))
    next(stream)
    first = time.perf_counter()
    produced = 1 + sum(1 for _ in stream)
    return produced, first - start, (produced - 1) / (time.perf_counter() - first)


def decode_rates(engine: FocusEngine, prompt_tokens: int, new_tokens: int) -> dict:
    """Tokens/s after the first, greedy, on the same prompt: the engine (plain: the prompt fits), the
    engine over plain ``nn.Linear`` weights (``kernels.unpacked``), the engine with every step through the
    model's own forward (not its decoding step, ``focus_core.decode_step``), and ``model.generate`` (each
    token's arrival noted by a streamer)."""
    text = "\n\n".join(haystack(engine.tokenizer, prompt_tokens)) + COUNTING
    ids = engine.tokenizer(text).input_ids[-prompt_tokens:]  # the counting at its end
    produced, first_token, engine_rate = engine_decode(engine, ids, new_tokens)
    with kernels.unpacked(engine.model):
        unpacked_rate = engine_decode(engine, ids, new_tokens)[2]
    step, engine.runner.step = engine.runner.step, None  # every step through the model's own forward
    try:
        forward_rate = engine_decode(engine, ids, new_tokens)[2]
    finally:
        engine.runner.step = step
    clock = Clock()
    with torch.inference_mode():
        engine.model.generate(
            torch.tensor([ids], device=engine.runner.device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=clock,
        )
    return {
        "prompt_tokens": len(ids),
        "engine_tokens": produced,
        "engine_first_token_s": first_token,
        "engine_decode_tokens_per_s": engine_rate,
        "engine_packed_linears": engine.runner.packed_linears,
        "engine_unpacked_decode_tokens_per_s": unpacked_rate,
        "engine_decode_step": type(step).__name__ if step is not None else None,
        "engine_model_forward_decode_tokens_per_s": forward_rate,
        "transformers_decode_tokens_per_s": clock.rate(),
    }


ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention")
LINEAR_OPS = ("linear", "addmm", "aten::mm", "bmm", "matmul")


def op_kind(name: str) -> str:
    """``attention``, ``linear`` or ``other``: what a profiled operator of the encoding pass is."""
    lowered = name.lower()
    if any(op in lowered for op in ATTENTION_OPS):
        return "attention"
    return "linear" if any(op in lowered for op in LINEAR_OPS) else "other"


def encode_time_by_kind(engine: FocusEngine, tokens: int, **overrides) -> dict[str, float] | None:
    """Shares of the wall time of one encoding of ``tokens`` of prose (and the read and token after it)
    under ``torch.profiler``: its operators' own time by :func:`op_kind`, and ``outside`` them (Python,
    the profiler's own cost). ``None`` off the CPU, where kernels run asynchronously."""
    if engine.runner.device.type != "cpu":
        return None
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        focus_point(engine, tokens, new_tokens=1, **overrides)
    wall = time.perf_counter() - start
    spent = dict.fromkeys(("attention", "linear", "other"), 0.0)
    for event in profile.key_averages():
        spent[op_kind(event.key)] += event.self_cpu_time_total / 1e6
    spent["outside"] = max(wall - sum(spent.values()), 0.0)
    return {kind: seconds / wall for kind, seconds in spent.items()}


def run_machine_limit(engine: FocusEngine, tokens: int, decode_prompt_tokens: int, decode_tokens: int) -> dict:
    chunked = FocusEngine(engine.model, engine.tokenizer, engine.config.replace(native_window=CHUNKED_WINDOW))
    every_chunk = {"select_cascade": None}  # the encoding rate over every chunk, not the cascade's saving
    focus_point(chunked, min(tokens, 2 * CHUNKED_WINDOW), new_tokens=1, **every_chunk)  # warm-up
    shape_tokens = engine.config.encode_batch_tokens  # the rows of one encoding micro-batch
    before = model_matmul_rate(engine.model, shape_tokens)
    point = focus_point(chunked, tokens, new_tokens=1, **every_chunk)
    after = model_matmul_rate(engine.model, shape_tokens)
    by_kind = encode_time_by_kind(chunked, tokens, **every_chunk)
    params = non_embedding_params(engine.model)
    share = point["encode_layers"] / engine.runner.num_layers  # an early exit runs only its layers
    limited = max(before, after) / (2 * params * share)
    bandwidth = memory_bandwidth(engine.runner.device)
    decode = decode_rates(engine, decode_prompt_tokens, decode_tokens)
    per_token = decode_bytes_per_token(engine, decode["prompt_tokens"] + decode_tokens // 2)
    memory_limited = bandwidth / per_token
    return {
        "tokens": point["tokens"],
        "non_embedding_params": params,
        "encode_layers": point["encode_layers"],
        "layers": engine.runner.num_layers,
        "matmul_flops_per_s": {"before": before, "after": after},
        "matmul_limited_tokens_per_s": limited,
        "encode_tokens_per_s": point["encode_tokens_per_s"],
        "encode_fraction_of_matmul_limit": point["encode_tokens_per_s"] / limited,
        "encode_flops_per_s": point["encode_flops_per_s"],  # attention included
        "encode_time_by_kind": by_kind,
        "encode_fraction_without_attention": (
            point["encode_tokens_per_s"] / (1 - by_kind["attention"]) / limited if by_kind else None
        ),
        "memory_bandwidth_bytes_per_s": bandwidth,
        "decode_bytes_per_token": per_token,
        "memory_limited_decode_tokens_per_s": memory_limited,
        **decode,
        "decode_fraction_of_memory_limit": decode["engine_decode_tokens_per_s"] / memory_limited,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2)")
    parser.add_argument("--tokens", type=int, default=8192, help="prose tokens to encode")
    parser.add_argument("--decode-prompt-tokens", type=int, default=1024, help="prompt of the decode comparison")
    parser.add_argument("--decode-tokens", type=int, default=64, help="greedy tokens decoded in the comparison")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for machine_limit.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = FocusConfig(progress=False)
    engine = FocusEngine.from_pretrained(args.model, config, dtype=args.dtype, device=args.device, progress=False)
    out = run_machine_limit(engine, args.tokens, args.decode_prompt_tokens, args.decode_tokens)
    result = {**result_header("machine_limit", engine), **out}
    print(f"wrote {write_json(args.results / 'machine_limit.json', result)}")
    cpu, by_kind = result["machine"]["cpu"], out["encode_time_by_kind"]
    spent = (
        f" (time: {', '.join(f'{kind} {100 * share:.0f}%' for kind, share in by_kind.items())}; "
        f"{100 * out['encode_fraction_without_attention']:.0f}% without attention)"
        if by_kind
        else ""
    )
    print(
        f"{cpu['name']} ({', '.join(cpu['flags'] or ['flags unknown'])}), {engine.model.focus_precision_reason}: "
        f"matmul {max(out['matmul_flops_per_s'].values()) / 1e9:.0f} GFLOP/s -> "
        f"{out['matmul_limited_tokens_per_s']:.0f} tokens/s matmul-limited; encode "
        f"{out['encode_tokens_per_s']:.0f} tokens/s = {100 * out['encode_fraction_of_matmul_limit']:.0f}%{spent}; "
        f"memory {out['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s / {out['decode_bytes_per_token'] / 1e6:.0f} MB a "
        f"token -> {out['memory_limited_decode_tokens_per_s']:.1f} tokens/s memory-limited; decode "
        f"{out['engine_decode_tokens_per_s']:.1f} tokens/s = {100 * out['decode_fraction_of_memory_limit']:.0f}% "
        f"(over unpacked weights {out['engine_unpacked_decode_tokens_per_s']:.1f}; transformers.generate "
        f"{out['transformers_decode_tokens_per_s']:.1f})"
    )
    return result


if __name__ == "__main__":
    main()
