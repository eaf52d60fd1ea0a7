"""Training throughput: tokens per second of optimizer steps, through the public ``train`` API.

    OMP_NUM_THREADS=1 python -m benchmarks.training_speed --label after --steps 6

The settings are those of the first adapter experiment (memory 1024, local 128, dynamic prompt 64,
8 targets, chunk sizes 128/256/512, rank 32, 2 examples per step, continuation + repetition) on the
standard library's top-level modules, so that a tree before and after a change is measured alike (run
this file from the other tree's root to measure it). Seconds count the optimizer steps only (not the
loading, tokenising or held-out evaluation). Merges ``{label: figures}`` into
``benchmarks/results/training_speed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

from focus_core import load_model
from focus_core.training import TokenStream, TrainingConfig, read_documents, train

from .common import machine

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"
SETTINGS = dict(
    chunk_sizes=(128, 256, 512),
    memory_tokens=1024,
    local_tokens=128,
    dynamic_prompt_len=64,
    target_tokens=8,
    rank=32,
    learning_rate=2e-3,
    warmup_steps=10,
    grad_accum=2,
    eval_examples=1,
    losses=("continuation", "repetition"),
)
# Settings only the newer loop has: consecutive examples share a memory (its chunk prefixes are reused);
# plain text only, as the older loop drew.
NEWER = dict(examples_per_window=4, synthetic_fraction=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="key of this measurement in the results file")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    model, tokenizer = load_model()
    files = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))
    stream = TokenStream(tokenizer, read_documents(files))
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    settings = SETTINGS | {k: v for k, v in NEWER.items() if k in known}
    cfg = TrainingConfig(steps=args.steps, eval_every=10**6, save_every=10**6, **settings)
    with tempfile.TemporaryDirectory() as out:
        state = train(model, tokenizer, stream, out, cfg, progress=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": commit or None,
        "machine": machine(),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "steps": state["step"],
        "tokens": state["tokens"],
        "seconds": state["seconds"],
        "tokens_per_second": state["tokens"] / state["seconds"],
        "step_losses": [h["loss"] for h in state["history"]],
    }
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results[args.label] = figures
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: figures[k] for k in ("steps", "tokens", "seconds", "tokens_per_second")}))


if __name__ == "__main__":
    main()
