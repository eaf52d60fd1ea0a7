"""Sweep chunk size x dtype on the embedded model: pass-key accuracy and chunk-encoding throughput.

    python -m benchmarks.sweep [--tokens 16000] [--seeds 3]

Writes results/sweep.json and results/sweep.png. The defaults of FocusConfig / load_model are taken
from this sweep.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focus_core import FocusConfig, FocusEngine, load_model  # noqa: E402
from focus_core.passkey import make_case, spread_depths  # noqa: E402

from .common import RESULTS, forward_flops, matmul_rate, write_result  # noqa: E402


def run(tokens: int, seeds: int, grid: list[tuple[str, int]]) -> dict:
    rows = []
    for dtype in dict.fromkeys(d for d, _ in grid):
        model, tokenizer = load_model(dtype=dtype)
        rate = matmul_rate(model.dtype)
        for chunk_size in [c for d, c in grid if d == dtype]:
            engine = FocusEngine(model, tokenizer, FocusConfig(chunk_size=chunk_size, max_new_tokens=8, progress=False))
            correct, flops, total_s = 0, 0.0, 0.0
            for seed, depth in enumerate(spread_depths(seeds)):
                engine.prefix_cache.clear()
                case = make_case(tokenizer, tokens, depth, seed)
                plan = engine.plan(case.prompt)
                flops += forward_flops(model, [1 + len(c) for c in plan.chunks])
                start = time.perf_counter()
                answer = engine.generate(case.prompt)
                total_s += time.perf_counter() - start
                correct += case.is_correct(answer)
            encode_s = engine.stats.encode_seconds
            row = {
                "dtype": dtype,
                "chunk_size": chunk_size,
                "accuracy": correct / seeds,
                "encode_flops_per_s": flops / encode_s,
                "matmul_flops_per_s": rate,
                "fraction_of_matmul_rate": flops / encode_s / rate,
                "mean_answer_s": total_s / seeds,
            }
            print(row, flush=True)
            rows.append(row)
    return {"tokens": tokens, "seeds": seeds, "rows": rows}


def plot(result: dict) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for dtype in sorted({r["dtype"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["dtype"] == dtype]
        sizes = [r["chunk_size"] for r in rows]
        ax1.plot(sizes, [r["mean_answer_s"] for r in rows], marker="o", label=dtype)
        ax2.plot(sizes, [100 * r["accuracy"] for r in rows], marker="o", label=dtype)
    ax1.set(xscale="log", xlabel="chunk size", ylabel="seconds per answer", title=f"time at {result['tokens']} tokens")
    ax2.set(xscale="log", xlabel="chunk size", ylabel="pass-key accuracy (%)", ylim=(-5, 105), title="accuracy")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "sweep.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--grid",
        nargs="+",
        default=["bfloat16:512", "bfloat16:1024", "bfloat16:2048", "float32:1024"],
        help="dtype:chunk_size pairs",
    )
    args = parser.parse_args()
    grid = [(d, int(c)) for d, c in (item.split(":") for item in args.grid)]
    result = run(args.tokens, args.seeds, grid)
    write_result("sweep", result)
    plot(result)


if __name__ == "__main__":
    main()
