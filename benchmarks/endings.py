"""Pass key with the endings people write: "... The pass key is" (no trailing space) and "... Answer:".

The suite's pass-key prompt ends with a space after "is", which tells SmolLM2 that digits come next;
without it the model hesitates between " ", " a" and " the". This measures both natural endings, five
seeds at depths 10-90%, for FocusLLM's aggregations past the window and for full attention at a length
that fits (the model's own score, the yardstick).

    python -m benchmarks.endings --tokens 32768 --full-attention-tokens 4096

Writes ``benchmarks/results/endings.json`` (``--name select/endings``: ``benchmarks/results/select/endings.json``).
"""

from __future__ import annotations

import argparse
import time

from focus_core import FocusConfig, FocusEngine
from focus_core.passkey import QUESTION, make_case, spread_depths

from .common import read_whole, write_result

ENDINGS = {
    "The pass key is": "\n\nWhat is the pass key? The pass key is",
    "Answer:": "\n\nWhat is the pass key?\nAnswer:",
}


def run(engine: FocusEngine, tokens: int, full_tokens: int, seeds: int, aggregations: list[str]) -> dict:
    records = []
    runs = [(full_tokens, "full attention", read_whole(engine))] + [
        (tokens, f"FocusLLM ({a})", {"aggregation": a}) for a in aggregations
    ]
    for n, method, overrides in runs:
        for seed, depth in enumerate(spread_depths(seeds)):
            case = make_case(engine.tokenizer, n, depth, seed)
            for ending, question in ENDINGS.items():
                prompt = case.prompt[: -len(QUESTION)] + question
                start = time.perf_counter()
                reply = engine.generate(prompt, **overrides)
                records.append(
                    {
                        "method": method,
                        "ending": ending,
                        "tokens": engine.count_tokens(prompt),
                        "seed": seed,
                        "depth": depth,
                        "passkey": case.passkey,
                        "reply": reply,
                        "correct": case.is_correct(reply),
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(records[-1], flush=True)
    summary = {
        f"{m} / {e}": sum(r["correct"] for r in records if r["method"] == m and r["ending"] == e) / seeds
        for m in dict.fromkeys(r["method"] for r in records)
        for e in ENDINGS
    }
    return {
        "tokens": tokens,
        "full_attention_tokens": full_tokens,
        "seeds": seeds,
        "summary": summary,
        "records": records,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--full-attention-tokens", type=int, default=4096)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--aggregations", nargs="+", default=["focus", "entropy"])
    parser.add_argument("--name", default="endings", help="results/<name>.json (default: %(default)s)")
    args = parser.parse_args(argv)
    config = FocusConfig(max_new_tokens=16, stop=("\n",), progress=False)
    engine = FocusEngine.from_pretrained(None, config)
    result = run(engine, args.tokens, args.full_attention_tokens, args.seeds, args.aggregations)
    write_result(args.name, result, engine)


if __name__ == "__main__":
    main()
