"""Pass-key retrieval accuracy of the embedded model: FocusLLM (entropy) at long lengths, and plain
full attention where it fits the native window (and one case past it, to record that it fails).

    python -m benchmarks.passkey [--lengths 8000 32000 64000] [--seeds 5] [--full-attention-lengths 8000 16000]

Every case starts from an empty prefix cache, so times include encoding. Writes results/passkey.json
and results/passkey.png.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from focus_core import FocusConfig, FocusEngine, load_model  # noqa: E402
from focus_core.passkey import make_case, spread_depths  # noqa: E402

from .common import RESULTS, write_result  # noqa: E402


def focus_cases(engine: FocusEngine, tokens: int, seeds: int, aggregation: str) -> list[dict]:
    cases = []
    for seed, depth in enumerate(spread_depths(seeds)):
        engine.prefix_cache.clear()
        case = make_case(engine.tokenizer, tokens, depth, seed)
        start = time.perf_counter()
        answer = engine.generate(case.prompt, aggregation=aggregation)
        cases.append({"seed": seed, "depth": depth, "tokens": engine.count_tokens(case.prompt),
                      "passkey": case.passkey, "answer": answer, "correct": case.is_correct(answer),
                      "seconds": time.perf_counter() - start})
        print(aggregation, tokens, cases[-1], flush=True)
    return cases


@torch.inference_mode()
def full_attention_cases(model, tokenizer, tokens: int, seeds: int) -> list[dict]:
    """Plain `transformers` greedy generation over the whole prompt, even past the native window."""
    cases = []
    for seed, depth in enumerate(spread_depths(seeds)):
        case = make_case(tokenizer, tokens, depth, seed)
        ids = tokenizer(case.prompt, return_tensors="pt").input_ids
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        cases.append({"seed": seed, "depth": depth, "tokens": ids.shape[1], "passkey": case.passkey,
                      "answer": answer, "correct": case.is_correct(answer), "seconds": time.perf_counter() - start})
        print("full", tokens, cases[-1], flush=True)
    return cases


def summary(cases: list[dict]) -> dict:
    return {"accuracy": sum(c["correct"] for c in cases) / len(cases),
            "mean_seconds": sum(c["seconds"] for c in cases) / len(cases), "cases": cases}


def plot(result: dict) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in result["methods"].items():
        lengths = sorted(runs, key=int)
        ax.plot([int(n) / 1000 for n in lengths], [100 * runs[n]["accuracy"] for n in lengths], marker="o", label=name)
    ax.axvline(result["native_window"] / 1000, color="grey", linestyle=":", label="native window")
    ax.set(xlabel="prompt length (K tokens)", ylabel="pass-key accuracy (%)", ylim=(-5, 105),
           title=f"{result['model']} ({result['dtype']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "passkey.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[8000, 32000, 64000])
    parser.add_argument("--full-attention-lengths", type=int, nargs="*", default=[8000, 16000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--aggregations", nargs="+", default=["entropy"])
    args = parser.parse_args()
    model, tokenizer = load_model()
    config = FocusConfig(max_new_tokens=8, progress=False)
    engine = FocusEngine(model, tokenizer, config)
    methods: dict[str, dict] = {}
    for aggregation in args.aggregations:
        methods[f"FocusLLM ({aggregation})"] = {
            str(n): summary(focus_cases(engine, n, args.seeds, aggregation)) for n in args.lengths}
    if args.full_attention_lengths:
        methods["full attention"] = {
            str(n): summary(full_attention_cases(model, tokenizer, n, args.seeds)) for n in args.full_attention_lengths}
    result = {"model": engine.model_name.split("/")[-1], "dtype": str(model.dtype), "native_window": engine.native_window,
              "config": {k: v for k, v in vars(config).items() if not k.startswith("_")}, "seeds": args.seeds,
              "methods": methods}
    write_result("passkey", result)
    plot(result)


if __name__ == "__main__":
    main()
