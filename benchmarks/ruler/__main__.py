"""``python -m benchmarks.ruler``: see the package docstring."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from focus_core import FocusConfig, FocusEngine

from ..common import add_one_stage, one_stage_settings
from .protocol import PARTS
from .recall import run_recall
from .runner import ROOT, make_methods, run_suite
from .tasks import TASKS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--samples", type=int, default=10, help="samples per task and length (the part's first n)")
    parser.add_argument(
        "--part",
        choices=sorted(PARTS),
        default="dev",
        help="the protocol's part: dev (tune here: seeds 0-999, own haystack, RULER's wording) or heldout "
        "(report here: seeds 1000-1999, Paul Graham's essays and Wikipedia, other wording)",
    )
    parser.add_argument("--tasks", nargs="+", default=["all"], choices=["all", *TASKS])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["entropy", "focus", "auto", "full", "truncation", "rag"],
        help="full, truncation, rag, or a FocusLLM aggregation",
    )
    parser.add_argument("--rag-top-k", type=int, default=4)
    parser.add_argument("--rag-chunk-size", type=int, default=256, help="tokens per RAG chunk (overlap 32)")
    parser.add_argument("--stop", nargs="*", default=[], help="stop strings (RULER uses none)")
    parser.add_argument(
        "--chat", action="store_true", help="ask the qa tasks through the model's chat template, as a chat user"
    )
    parser.add_argument("--resume", action="store_true", help="keep the records in the results file, run the rest")
    add_one_stage(parser)
    parser.add_argument(
        "--recall",
        action="store_true",
        help="report recall@1/@3 of the answer chunks by the engine's relevance instead",
    )
    parser.add_argument("--signals", nargs="+", default=["likelihood"], help="relevance signals for --recall")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="default: benchmarks/results/ruler.json (relevance_recall.json with --recall)",
    )
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "ruler.png")
    args = parser.parse_args(argv)
    tasks = list(TASKS) if "all" in args.tasks else args.tasks
    results_dir = ROOT / "benchmarks" / "results" / ("" if args.part == "dev" else args.part)
    config = FocusConfig(progress=False, prefix_cache_bytes=8 * 2**30, **one_stage_settings(args))
    engine = FocusEngine.from_pretrained(None, config)
    start = time.perf_counter()
    if args.recall:
        run_recall(
            engine,
            tasks,
            args.lengths,
            args.samples,
            args.signals,
            args.results or results_dir / "relevance_recall.json",
            resume=args.resume,
        )
    else:
        methods = make_methods(args.methods, args.rag_top_k, args.rag_chunk_size)
        run_suite(
            engine,
            tasks,
            args.lengths,
            args.samples,
            methods,
            args.results or results_dir / "ruler.json",
            args.figure,
            resume=args.resume,
            stop=args.stop,
            part=PARTS[args.part],
            chat=args.chat,
        )
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
