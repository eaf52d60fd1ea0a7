"""Train a candidate-projection adapter for the embedded SmolLM2-135M-Instruct on CPython's own source
text, then compare ``kv`` untrained, ``kv`` trained and ``entropy`` on held-out pass-key and real-prose
needle cases and on the perplexity of held-out prose.

    python -m benchmarks.adapter_experiment --steps 120            # train, then evaluate
    python -m benchmarks.adapter_experiment --adapter DIR          # evaluate an adapter already trained

Training text: the top-level ``*.py`` modules of the standard library (code, docstrings, comments); the
pass-key filler, the needles and the ``pydoc_data`` prose used for evaluation are not in it. Writes
``benchmarks/results/adapter.json``, ``docs/adapter.png``, and the adapter to ``--output``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sysconfig
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focus_core import FocusConfig, FocusEngine, load_model  # noqa: E402
from focus_core.training import TokenStream, TrainingConfig, read_documents, train  # noqa: E402

from .accuracy import run_grid  # noqa: E402
from .common import machine  # noqa: E402
from .methods import FocusMethod  # noqa: E402
from .perplexity import sample_ids  # noqa: E402
from .plots import save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAINING = TrainingConfig(
    steps=120,
    chunk_sizes=(128, 256, 512),
    memory_tokens=1024,
    local_tokens=128,
    dynamic_prompt_len=64,
    target_tokens=8,
    losses=("continuation", "repetition"),  # this experiment: the paper's two losses on plain text
    synthetic_fraction=0.0,
    rank=32,
    learning_rate=2e-3,
    warmup_steps=10,
    grad_accum=2,
    eval_every=20,
    eval_examples=8,
    save_every=20,
)


def training_files() -> list[str]:
    return sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))


def run_training(output: Path, steps: int) -> dict:
    model, tokenizer = load_model()
    stream = TokenStream(tokenizer, read_documents(training_files()))
    cfg = TRAINING.replace(steps=steps)
    start = time.perf_counter()
    state = train(model, tokenizer, stream, output, cfg, resume=True)
    return {
        "config": vars(cfg) | {"chunk_sizes": list(cfg.chunk_sizes), "losses": list(cfg.losses)},
        "files": len(training_files()),
        "train_tokens": len(stream.train),
        "steps": state["step"],
        "tokens_seen": state["tokens"],
        "train_seconds": state["seconds"],
        "wall_seconds_this_run": time.perf_counter() - start,
        "evaluations": state["evaluations"],
    }


def evaluate(adapter: Path, lengths: list[int], depths: list[float], samples: int, continuation: int) -> dict:
    config = FocusConfig(max_new_tokens=16, stop=("\n",), progress=False, prefix_cache_bytes=4 * 2**30)
    trained = FocusEngine.from_pretrained(None, config, adapter=adapter)
    untrained = FocusEngine(trained.model, trained.tokenizer, config, prefix_cache=trained.prefix_cache)
    methods = [
        FocusMethod("FocusLLM (entropy)", "entropy"),
        FocusMethod("FocusLLM (kv, trained)", "kv"),
        FocusMethod("FocusLLM (kv, untrained)", "kv", engine=untrained),
    ]
    grids = {kind: run_grid(trained, kind, lengths, depths, methods) for kind in ("passkey", "needle")}
    ppl: dict[str, dict[str, float]] = {}
    for n in lengths:
        for seed in range(samples):
            context, target = sample_ids(trained, n, continuation, seed)
            for method in methods:
                engine = method.engine or trained
                nll = -float(engine.score(context, target, aggregation=method.aggregation).mean())
                ppl.setdefault(method.name, {}).setdefault(str(n), []).append(nll)
                print(f"perplexity {n} {seed} {method.name}: {math.exp(nll):.2f}", flush=True)
    return {
        "grids": grids,
        "perplexity": {m: {n: math.exp(sum(v) / len(v)) for n, v in by_n.items()} for m, by_n in ppl.items()},
        "perplexity_samples": samples,
        "continuation_tokens": continuation,
    }


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    evals = result["training"]["evaluations"] if result.get("training") else []
    axes[0].plot([e["step"] for e in evals], [e["loss"] for e in evals], marker="o")
    axes[0].set(xlabel="step", ylabel="held-out target loss", title="training")
    for ax, kind in zip(axes[1:], ("passkey", "needle")):
        summary = result["evaluation"]["grids"][kind]["summary"]
        names = list(summary)
        for j, length in enumerate(result["lengths"]):
            ax.bar(
                [i + 0.35 * j for i in range(len(names))],
                [100 * summary[m]["by_length"][str(length)] for m in names],
                0.35,
                label=f"{length // 1024}K tokens",
            )
        ax.set_xticks([i + 0.17 for i in range(len(names))], [n.replace("FocusLLM ", "") for n in names], fontsize=8)
        ax.set(ylabel="accuracy (%)", title=kind, ylim=(0, 105))
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=TRAINING.steps)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "adapter_run")
    parser.add_argument("--adapter", type=Path, default=None, help="evaluate this adapter instead of training one")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--perplexity-samples", type=int, default=2)
    args = parser.parse_args()
    result = {
        "benchmark": "adapter",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "lengths": args.lengths,
        "depths": args.depths,
    }
    adapter = args.adapter
    if adapter is None:
        result["training"] = run_training(args.output, args.steps)
        adapter = args.output
    result["adapter"] = str(adapter)
    result["evaluation"] = evaluate(adapter, args.lengths, args.depths, args.perplexity_samples, 128)
    out = ROOT / "benchmarks" / "results" / "adapter.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, ROOT / "docs" / "adapter.png")
    print(json.dumps({k: v["summary"] for k, v in result["evaluation"]["grids"].items()}, indent=1))
    print(json.dumps(result["evaluation"]["perplexity"], indent=1))


if __name__ == "__main__":
    main()
