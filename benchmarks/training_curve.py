"""A real training run of the candidate projections for the embedded SmolLM2-135M-Instruct, and its
learning curve on retrieval: pass key @16K/@32K and RULER niah_single_1 @32K, ``kv`` through ``auto``
with each snapshot, against the best training-free mode (``entropy``) on the same cases.

    OMP_NUM_THREADS=1 nohup nice -n 10 python -m benchmarks.training_curve train --output DIR &
    OMP_NUM_THREADS=1 python -m benchmarks.training_curve evaluate --output DIR

``train`` is resumable (run it again after an interruption). Training text (none of it is evaluation
text): the standard library's top-level ``*.py`` modules (code, docstrings, comments) and the package
descriptions (``METADATA``) of the installed Python packages (English prose, Markdown), with half of the
memories carrying spliced-in recall facts (:mod:`focus_core.training.data`). ``evaluate`` writes
``benchmarks/results/training_curve.json`` (after every case) and ``docs/training_curve.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import sysconfig
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focus_core import FocusConfig, FocusEngine, load_model  # noqa: E402
from focus_core.kv_cache import PrefixCache  # noqa: E402
from focus_core.passkey import make_case  # noqa: E402
from focus_core.training import TokenStream, TrainingConfig, read_documents, train  # noqa: E402

from .common import machine  # noqa: E402
from .plots import save_figure  # noqa: E402
from .ruler import make_sample  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "training_curve.json"
FIGURE = ROOT / "docs" / "training_curve.png"
RUN = TrainingConfig(
    steps=96,
    chunk_sizes=(256, 512, 1024),
    memory_tokens=3072,
    local_tokens=128,
    dynamic_prompt_len=64,
    target_tokens=16,
    losses=("distill", "distill", "repetition"),
    examples_per_window=4,
    synthetic_fraction=0.5,
    rank=32,
    learning_rate=2e-3,
    warmup_steps=10,
    grad_accum=2,
    eval_every=24,
    eval_examples=8,
    save_every=8,
    snapshot_every=24,
)


def training_files() -> list[str]:
    stdlib = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))
    metadata = sorted(glob.glob(str(Path(sysconfig.get_paths()["purelib"]) / "*.dist-info" / "METADATA")))
    return stdlib + metadata


def run_training(output: Path, steps: int) -> None:
    model, tokenizer = load_model()
    stream = TokenStream(tokenizer, read_documents(training_files()))
    print(f"training text: {len(stream.train)} tokens, held out {len(stream.eval)}", flush=True)
    train(model, tokenizer, stream, output, RUN.replace(steps=steps), resume=True, progress=True)


def cases(tokenizer, samples: int) -> list[dict]:
    out = []
    for length in (16384, 32768):
        for seed in range(samples):
            case = make_case(tokenizer, length, (seed + 0.5) / samples, seed)
            out.append({"task": f"passkey@{length // 1024}K", "seed": seed, "prompt": case.prompt, "check": case})
    for seed in range(samples):
        sample = make_sample("niah_single_1", tokenizer, 32768, seed)
        out.append({"task": "niah_single_1@32K", "seed": seed, "prompt": sample.prompt, "check": sample})
    return out


def evaluate(output: Path, samples: int) -> dict:
    model, tokenizer = load_model()
    config = FocusConfig(max_new_tokens=12, progress=False, prefix_cache_bytes=4 * 2**30)
    shared = PrefixCache(config.prefix_cache_bytes)
    snapshots = sorted((output / "snapshots").glob("step-*"))
    history = json.loads((output / "checkpoint" / "trainer_state.json").read_text())
    result = {
        "benchmark": "training_curve",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "training": {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(RUN).items()},
            "files": len(training_files()),
            "steps": history["step"],
            "tokens": history["tokens"],
            "seconds": history["seconds"],
            "evaluations": history["evaluations"],
            "step_losses": [h["loss"] for h in history["history"]],
        },
        "generation": {"max_new_tokens": config.max_new_tokens, "greedy": True},
        "records": [],
    }
    methods = [("entropy", None, "entropy"), ("kv step 0 (untrained)", None, "kv")]
    methods += [(f"kv step {int(s.name.removeprefix('step-'))}", s, "auto") for s in snapshots]
    todo = cases(tokenizer, samples)
    for name, adapter, aggregation in methods:
        engine = FocusEngine(model, tokenizer, config, prefix_cache=shared)
        if adapter is not None:
            engine.load_adapter(adapter)
        for case in todo:
            began = time.perf_counter()
            reply = engine.generate(case["prompt"], aggregation=aggregation)
            correct = case["check"].is_correct(reply)
            record = {"method": name, "task": case["task"], "seed": case["seed"], "reply": reply, "correct": correct}
            result["records"].append(record | {"seconds": time.perf_counter() - began})
            print(f"{name} {case['task']} seed {case['seed']}: {reply!r} {'ok' if correct else 'wrong'}", flush=True)
            result["summary"] = summarize(result["records"])
            RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, FIGURE)
    return result


def summarize(records: list[dict]) -> dict:
    table: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        table.setdefault(r["method"], {}).setdefault(r["task"], []).append(r["correct"])
    return {m: {t: f"{sum(v)}/{len(v)}" for t, v in by_task.items()} for m, by_task in table.items()}


def plot(result: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    evals = result["training"]["evaluations"]
    for key in ("loss", "distill", "repetition"):
        if key in evals[0]:
            label = {"loss": "all (mean)", "distill": "distill: KL(teacher ‖ student)", "repetition": "repetition: CE"}
            left.plot([e["step"] for e in evals], [e[key] for e in evals], marker="o", label=label[key])
    left.set(xlabel="optimizer step", ylabel="held-out loss (nats)", title="training (1 CPU core)")
    left.legend(fontsize=8)
    summary = result["summary"]
    tasks = list(summary["entropy"])
    steps = [(int(m.split()[2]), m) for m in summary if m.startswith("kv step")]
    for i, task in enumerate(tasks):
        colour = f"C{i}"
        score = [_fraction(summary[m].get(task, "0/1")) for _, m in steps]
        marker = "os^v"[i % 4]
        right.plot([s for s, _ in steps], score, marker=marker, ms=9 - 2 * i, color=colour, label=f"kv: {task}")
        right.axhline(_fraction(summary["entropy"][task]), color=colour, ls="--", lw=1, label=f"entropy: {task}")
    right.set(xlabel="optimizer step", ylabel="correct (%)", title="retrieval, kv through auto", ylim=(-5, 105))
    right.legend(fontsize=7)
    save_figure(fig, path)


def _fraction(text: str) -> float:
    correct, total = map(int, text.split("/"))
    return 100 * correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--output", type=Path, required=True, help="run directory (checkpoints, snapshots)")
    parser.add_argument("--steps", type=int, default=RUN.steps)
    parser.add_argument("--samples", type=int, default=2, help="cases per task")
    args = parser.parse_args()
    if args.command == "train":
        run_training(args.output, args.steps)
    else:
        print(json.dumps(evaluate(args.output, args.samples)["summary"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
