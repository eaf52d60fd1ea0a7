"""The fair fight: a long-window model reading the whole prompt itself, against FocusLLM reading it in
chunks and against vector RAG.

On Gemma 3 270M (pretrained, native window 32K; the packaged benchmark model, ``load_model("gemma-3-270m")``;
``--model SmolLM2-135M-Instruct``: the embedded one, window 8K) every RULER-format case of 8K-32K tokens is
answered, side by side in one run per length, by

- ``full attention``: the model over the whole prompt (it fits its window);
- ``FocusLLM (<mode>, <W>K window)``: the same model and weights in an engine whose native window is forced
  to ``W`` (4K and 8K by default), so the prompt is read in chunks with ``<mode>`` aggregation;
- ``RAG top-k x n``: the question over the ``k`` chunks nearest to it (all-MiniLM-L6-v2, offline).

Each record holds the score, seconds, seconds to the first token and the memory the answer added at its
peak (``benchmarks.common.PeakMemory``); the summary holds them per method and length. The prefix cache
is off, so every answer is a first question over its document. Writes the results JSON, a heatmap of
scores and a figure of the costs::

    python -m benchmarks.fair_fight --lengths 8192 16384 32768 --samples 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from focus_core import FocusConfig, FocusEngine, load_model
from focus_core.loading import DEFAULT_MODEL_NAME, GEMMA3_270M

from .common import add_one_stage, one_stage_settings
from .methods import FocusMethod, FullAttention, Method, VectorRAG
from .plots import plt, save_figure
from .ruler import PARTS, TASKS, run_suite

ROOT = Path(__file__).resolve().parent.parent


def fair_fight_methods(
    model,
    tokenizer,
    windows: list[int],
    modes: list[str],
    rag_top_k: int,
    rag_chunk_size: int,
    full: bool = True,
    rag: bool = True,
    **settings,
) -> list[Method]:
    """Full attention (unless ``full`` is false), FocusLLM in each ``mode`` under each forced window (engines
    sharing the model, with FocusConfig ``settings``), RAG (unless ``rag`` is false)."""
    methods: list[Method] = [FullAttention("full attention")] if full else []
    for window in windows:
        config = FocusConfig(native_window=window, prefix_cache_bytes=0, progress=False, **settings)
        engine = FocusEngine(model, tokenizer, config)
        size = f"{window // 1024}K" if window % 1024 == 0 else str(window)
        methods += [FocusMethod(f"FocusLLM ({mode}, {size} window)", mode, engine) for mode in modes]
    if rag:
        name = f"RAG top-{rag_top_k} x {rag_chunk_size}"
        methods.append(VectorRAG(name, chunk_size=rag_chunk_size, top_k=rag_top_k))
    return methods


def plot_costs(summary: dict, path: Path, title: str) -> None:
    """Per length: RULER mean, seconds to the first token and peak memory added, one bar per method."""
    methods = list(summary)
    lengths = sorted({int(n) for s in summary.values() for n in s["ruler_mean"]})
    panels = (
        ("RULER mean", lambda s, n: s["ruler_mean"].get(n)),
        ("seconds to first token", lambda s, n: s["by_length"].get(n, {}).get("first_token_seconds")),
        ("peak memory added (MiB)", lambda s, n: _mib(s["by_length"].get(n, {}).get("peak_bytes"))),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    width = 0.8 / max(1, len(methods))
    for ax, (label, value) in zip(axes, panels):
        for i, method in enumerate(methods):
            heights = [value(summary[method], str(n)) for n in lengths]
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(lengths))]
            ax.bar(xs, [h if h is not None else 0 for h in heights], width, label=method)
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[GEMMA3_270M, DEFAULT_MODEL_NAME], default=GEMMA3_270M)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--samples", type=int, default=5, help="samples per task and length (the part's first n)")
    parser.add_argument("--part", choices=sorted(PARTS), default="dev", help="the held-out protocol's part")
    parser.add_argument("--tasks", nargs="+", default=["all"], choices=["all", *TASKS])
    parser.add_argument("--windows", type=int, nargs="+", default=[4096, 8192], help="forced native windows")
    parser.add_argument("--modes", nargs="+", default=["select"], help="FocusLLM aggregations")
    parser.add_argument("--rag-top-k", type=int, default=4)
    parser.add_argument("--rag-chunk-size", type=int, default=256)
    parser.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model's own full attention over the whole prompt (minutes a case at 16K+ on a CPU)",
    )
    parser.add_argument("--rag", action=argparse.BooleanOptionalAction, default=True, help="vector RAG")
    add_one_stage(parser)
    parser.add_argument("--resume", action="store_true", help="keep the records in the results file, run the rest")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "gemma3" / "fair_fight.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "gemma3" / "fair_fight.png")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(None if args.model == DEFAULT_MODEL_NAME else args.model)
    full = FocusEngine(model, tokenizer, FocusConfig(prefix_cache_bytes=0, progress=False))
    methods = fair_fight_methods(
        model,
        tokenizer,
        args.windows,
        args.modes,
        args.rag_top_k,
        args.rag_chunk_size,
        args.full,
        args.rag,
        **one_stage_settings(args),
    )
    tasks = list(TASKS) if "all" in args.tasks else args.tasks
    start = time.perf_counter()
    part = PARTS[args.part]
    payload = run_suite(
        full, tasks, args.lengths, args.samples, methods, args.results, args.figure, resume=args.resume, part=part
    )
    costs = args.figure.with_name(args.figure.stem + "_costs.png")
    plot_costs(payload["summary"], costs, f"The fair fight ({args.model})")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
