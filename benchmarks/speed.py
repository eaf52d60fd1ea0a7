"""Speed against context length, cold (empty prefix cache), on real prose continued by the model:

- FocusLLM (told the native window is 2K, so that it chunks at every length), by default (``auto``) and
  in the :data:`VARIANTS`: chunk-encoding tokens/s, time to first token, decode tokens/s; the FLOP rate of encoding
  as a fraction of this machine's measured matmul rate (FLOPs = 2 x non-embedding params x tokens +
  causal attention);
- full attention (``transformers.generate``, greedy) at the lengths where it is run: prefill tokens/s,
  time to first token, decode tokens/s;
- reuse: a second, different question over the same document, time second / first.

On CUDA each point also records the peak GPU memory (``torch.cuda.max_memory_allocated``), and a full
attention run that does not fit the GPU is recorded as out of memory. On its own::

    python -m benchmarks.speed --lengths 32768 131072 --full-lengths 32768 131072 --device cuda \
        --results benchmarks/results/gpu

writes ``<results>/speed.json`` (default ``benchmarks/results/speed.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from focus_core import FocusConfig, FocusEngine
from focus_core.memory import GiB
from focus_core.passkey import make_case

from .common import (
    RESULTS,
    Clock,
    forward_flops,
    model_matmul_rate,
    peak_memory,
    reset_peak_memory,
    result_header,
    write_json,
)
from .haystack import haystack

CHUNKED_WINDOW = 2048  # FocusLLM is timed with this native window, so that it chunks at every length


def prose(tokenizer, n_tokens: int) -> str:
    return "\n\n".join(haystack(tokenizer, n_tokens))


def focus_point(engine: FocusEngine, n_tokens: int, new_tokens: int, **overrides) -> dict:
    prompt = prose(engine.tokenizer, n_tokens)
    engine.prefix_cache.clear()
    reset_peak_memory(engine.runner.device)
    before_s, before_tokens = engine.stats.encode_seconds, engine.stats.tokens_encoded
    start, first, count = time.perf_counter(), None, 0
    for _ in engine.stream_ids(prompt, max_new_tokens=new_tokens, **overrides):
        first = first or time.perf_counter() - start
        count += 1
    total = time.perf_counter() - start
    encode_s = engine.stats.encode_seconds - before_s
    tokens = engine.stats.tokens_encoded - before_tokens
    request = engine.request(prompt, max_new_tokens=new_tokens, **overrides)
    layers = request.layout.encode.layers  # the layers the encoding pass runs (an early exit: fewer)
    flops = forward_flops(engine.model, [len(engine.encoder.bos) + len(c) for c in request.plan.chunks], layers)
    return {
        "tokens": engine.count_tokens(prompt),
        "encode_tokens_per_s": tokens / encode_s,
        "encode_flops_per_s": flops / encode_s,
        "ttft_s": first,
        "new_tokens": count,
        "decode_tokens_per_s": (count - 1) / (total - first) if count > 1 else None,
        "total_s": total,
        "peak_gpu_bytes": peak_memory(engine.runner.device),
        "encode_layers": layers or engine.runner.num_layers,
    }


@torch.inference_mode()
def full_attention_point(engine: FocusEngine, n_tokens: int, new_tokens: int) -> dict:
    """Full attention (``generate``) over ``n_tokens`` of prose; one that does not fit the GPU is recorded
    as ``out_of_memory`` with no timings."""
    device = engine.runner.device
    ids = engine.tokenizer(prose(engine.tokenizer, n_tokens), return_tensors="pt").input_ids.to(device)
    reset_peak_memory(device)
    clock, start = Clock(), time.perf_counter()
    try:
        engine.model.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, streamer=clock, pad_token_id=engine.tokenizer.eos_token_id
        )
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        timings = dict.fromkeys(("encode_tokens_per_s", "ttft_s", "new_tokens", "decode_tokens_per_s", "total_s"))
        return {"tokens": ids.shape[1], **timings, "peak_gpu_bytes": peak_memory(device), "out_of_memory": True}
    total = time.perf_counter() - start
    first, count = clock.times[1] - start, len(clock.times) - 1
    return {
        "tokens": ids.shape[1],
        "encode_tokens_per_s": ids.shape[1] / first,
        "ttft_s": first,
        "new_tokens": count,
        "decode_tokens_per_s": (count - 1) / (total - first) if count > 1 else None,
        "total_s": total,
        "peak_gpu_bytes": peak_memory(device),
        "out_of_memory": False,
    }


def second_question(engine: FocusEngine, n_tokens: int) -> dict:
    case = make_case(engine.tokenizer, n_tokens, depth=0.3, seed=2)
    document = case.prompt[: case.prompt.rindex("\n\nWhat is the pass key?")]
    first_prompt = document + "\n\nWhat is the pass key? The pass key is "
    second_prompt = document + "\n\nWhich number were you asked to remember? The number to remember is "
    engine.prefix_cache.clear()
    encoded = engine.stats.chunks_encoded
    start = time.perf_counter()
    first = engine.generate(first_prompt)
    first_s, mid = time.perf_counter() - start, engine.stats.chunks_encoded
    second = engine.generate(second_prompt)
    second_s = time.perf_counter() - start - first_s
    return {
        "tokens": engine.count_tokens(first_prompt),
        "first_s": first_s,
        "second_s": second_s,
        "ratio": second_s / first_s,
        "first_answer": first,
        "second_answer": second,
        "passkey": case.passkey,
        "chunks_encoded_first": mid - encoded,
        "chunks_encoded_second": engine.stats.chunks_encoded - mid,
    }


# FocusLLM settings timed beside the default (auto): entropy over the top chunks, and over every chunk (as
# the first release decoded: one row per chunk at every step)
VARIANTS = {
    "entropy": {"aggregation": "entropy"},
    "entropy, every chunk": {"aggregation": "entropy", "top_chunks": 2**31},
}


def run_speed(
    engine: FocusEngine, focus_lengths: list[int], full_lengths: list[int], reuse_tokens: int, new_tokens: int
) -> dict:
    chunked = FocusEngine(engine.model, engine.tokenizer, engine.config.replace(native_window=CHUNKED_WINDOW))
    variants: dict[str, list[dict]] = {}
    for name, overrides in {"auto": {}, **VARIANTS}.items():
        for n in focus_lengths:
            variants.setdefault(name, []).append(focus_point(chunked, n, new_tokens, **overrides))
            print(f"speed FocusLLM ({name})", variants[name][-1], flush=True)
    focus = variants["auto"]
    full = []
    for n in full_lengths:
        full.append(full_attention_point(engine, n, new_tokens))
        print("speed full attention", full[-1], flush=True)
    rate = model_matmul_rate(engine.model)
    for point in focus:
        point["fraction_of_matmul_rate"] = point["encode_flops_per_s"] / rate
    reuse = second_question(engine, reuse_tokens)
    print("speed reuse", reuse, flush=True)
    return {
        "new_tokens": new_tokens,
        "focusllm_native_window": CHUNKED_WINDOW,
        "matmul_flops_per_s": rate,
        "focusllm": focus,
        "focusllm_variants": variants,
        "full_attention": full,
        "second_question": reuse,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384], help="FocusLLM prompt lengths")
    parser.add_argument("--full-lengths", type=int, nargs="*", default=[4096], help="full attention prompt lengths")
    parser.add_argument("--reuse-tokens", type=int, default=16384, help="document length of the second question")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for speed.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = FocusConfig(max_new_tokens=args.new_tokens, progress=False, prefix_cache_bytes=8 * GiB)
    engine = FocusEngine.from_pretrained(args.model, config, dtype=args.dtype, device=args.device, progress=False)
    print(f"speed: {engine.model_name} on {engine.runner.device}, {engine.model.focus_precision_reason}", flush=True)
    speed = run_speed(engine, args.lengths, args.full_lengths, args.reuse_tokens, args.new_tokens)
    result = {**result_header("speed", engine), **speed}
    print(f"wrote {write_json(args.results / 'speed.json', result)}")
    for name, key in (("FocusLLM", "focusllm"), ("full attention", "full_attention")):
        for p in speed[key]:
            print(f"{name} at {p['tokens']} tokens: {summary(p)}")
    return result


def summary(point: dict) -> str:
    """One line: time to first token, decode rate, peak GPU memory."""
    if point.get("out_of_memory"):
        return "out of GPU memory"
    decode = point["decode_tokens_per_s"]
    line = f"TTFT {point['ttft_s']:.2f} s, decode {f'{decode:.1f} tokens/s' if decode else 'n/a'}"
    peak = point["peak_gpu_bytes"]
    return line + (f", peak GPU memory {peak / GiB:.2f} GiB" if peak is not None else "")


if __name__ == "__main__":
    main()
