"""Where FocusLLM stands, in one command: accuracy against full attention, truncation and vector RAG,
speed, and perplexity, on the embedded SmolLM2-135M-Instruct.

    python -m benchmarks.run --suite quick     # under 10 minutes on a 2-core CPU
    python -m benchmarks.run --suite full      # the committed results (about an hour there)
    python -m benchmarks.run --suite full --parts speed perplexity

Writes ``<results>/{passkey,needle,speed,perplexity}.json`` (each with machine, versions, settings and
seeds) and ``<docs>/{passkey,needle,peers,speed,perplexity}.png``; the full suite writes to
``benchmarks/results`` and ``docs``, the quick one to ``benchmarks/results/quick`` and ``docs/quick``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from focus_core import FocusConfig, FocusEngine

from . import plots
from .accuracy import run_grid
from .common import result_header, write_json
from .methods import PEERS, peers
from .perplexity import run_perplexity
from .speed import run_speed

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("passkey", "needle", "speed", "perplexity")
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@dataclass(frozen=True)
class Suite:
    name: str
    passkey_lengths: list[int]
    needle_lengths: list[int]
    depths: list[float]  # pass-key depths
    needle_depths: list[float]
    speed_lengths: list[int]
    full_attention_speed_lengths: list[int]
    reuse_tokens: int
    perplexity_lengths: list[int]
    perplexity_samples: int
    continuation_tokens: int
    rag_top_k: tuple[int, ...] = (2,)
    config: FocusConfig = field(default_factory=lambda: FocusConfig(max_new_tokens=16, stop=("\n",), progress=False))
    speed_new_tokens: int = 32


SUITES = {
    "full": Suite(
        "full",
        passkey_lengths=[4096, 8192, 16384, 32768, 65536, 131072],
        needle_lengths=[4096, 8192, 16384, 32768],
        depths=DEPTHS,
        needle_depths=[0.0, 0.5, 1.0],
        speed_lengths=[4096, 8192, 16384, 32768, 65536],
        full_attention_speed_lengths=[2048, 4096, 8192],
        reuse_tokens=32768,
        perplexity_lengths=[16384, 32768],
        perplexity_samples=2,
        continuation_tokens=128,
    ),
    "quick": Suite(
        "quick",
        passkey_lengths=[4096, 16384],
        needle_lengths=[4096, 16384],
        depths=[0.0, 0.5, 1.0],
        needle_depths=[0.5],
        speed_lengths=[4096, 16384],
        full_attention_speed_lengths=[4096],
        reuse_tokens=16384,
        perplexity_lengths=[16384],
        perplexity_samples=1,
        continuation_tokens=64,
    ),
}


def run_suite(
    suite: Suite,
    engine: FocusEngine,
    results: Path,
    docs: Path,
    parts: tuple[str, ...] = PARTS,
    methods: tuple[str, ...] | None = None,
) -> dict:
    """Run ``parts`` of ``suite`` with ``engine``; write JSON to ``results`` and PNG to ``docs``.

    ``methods``: FocusLLM aggregations and peers (:data:`~benchmarks.methods.PEERS`) to run; default
    ``focus``, ``entropy`` (and ``kv`` when the engine has trained candidates) and every peer.
    """
    results.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    trained = engine.aggregation_for(engine.config.replace(aggregation="auto")) == "kv"
    methods = methods or ("focus", "entropy", *(("kv",) if trained else ()), *PEERS)
    aggregations = tuple(m for m in methods if m not in PEERS)
    methods = peers(aggregations, suite.rag_top_k, others=tuple(m for m in methods if m in PEERS))
    out: dict[str, dict] = {}
    grids = (("passkey", suite.passkey_lengths, suite.depths), ("needle", suite.needle_lengths, suite.needle_depths))
    for kind, lengths, depths in grids:
        if kind in parts:
            out[kind] = run_grid(engine, kind, lengths, depths, methods)
            plots.grid_heatmaps(
                out[kind], f"{kind}: accuracy by length and depth ({engine.model_name})", docs / f"{kind}.png"
            )
    if "speed" in parts:
        out["speed"] = run_speed(
            engine, suite.speed_lengths, suite.full_attention_speed_lengths, suite.reuse_tokens, suite.speed_new_tokens
        )
        plots.speed_curves(out["speed"], docs / "speed.png")
    if "perplexity" in parts:
        out["perplexity"] = run_perplexity(
            engine, suite.perplexity_lengths, suite.perplexity_samples, suite.continuation_tokens, aggregations
        )
        plots.perplexity_lines(out["perplexity"], docs / "perplexity.png")
    if "passkey" in out or "needle" in out:  # a grid not run this time comes from its earlier results
        grids = [
            out[k] if k in out else json.loads((results / f"{k}.json").read_text())
            for k in ("passkey", "needle")
            if k in out or (results / f"{k}.json").is_file()
        ]
        plots.peer_bars(grids, docs / "peers.png")
    for part, payload in out.items():
        write_json(
            results / f"{part}.json", {**result_header(part, engine), "suite": dataclasses.asdict(suite), **payload}
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=SUITES, default="quick")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--adapter", default=None, help="candidate-projection adapter (adds FocusLLM (kv))")
    parser.add_argument(
        "--methods", nargs="+", default=None, help=f"FocusLLM aggregations and peers ({', '.join(PEERS)}); default: all"
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths of both grids")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None)
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    if args.lengths:
        suite = dataclasses.replace(suite, passkey_lengths=args.lengths, needle_lengths=args.lengths)
    sub = "" if suite.name == "full" else suite.name
    load = {"adapter": args.adapter} if args.adapter else {}
    engine = FocusEngine.from_pretrained(None, suite.config.replace(prefix_cache_bytes=8 * 2**30), **load)
    start = time.perf_counter()
    run_suite(
        suite,
        engine,
        args.results or ROOT / "benchmarks" / "results" / sub,
        args.docs or ROOT / "docs" / sub,
        tuple(args.parts),
        tuple(args.methods) if args.methods else None,
    )
    print(f"suite {suite.name} done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
