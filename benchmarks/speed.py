"""Speed of FocusLLM on the embedded model, each figure measured in the same run:

1. time to answer a 7.5K-token pass-key prompt: FocusLLM (path forced with a 4K native window) vs plain
   full-attention `transformers.generate`, as a ratio;
2. chunk-encoding throughput at 32K tokens as a fraction of this machine's measured matmul rate
   (FLOPs = 2 x non-embedding params x tokens + causal attention);
3. a second, different question over the same 32K-token document: time second / first.

    python -m benchmarks.speed [--repeats 3]

Writes results/speed.json and results/speed.png.
"""

from __future__ import annotations

import argparse
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from focus_core import FocusConfig, FocusEngine, load_model  # noqa: E402
from focus_core.passkey import make_case  # noqa: E402

from .common import RESULTS, forward_flops, matmul_rate, write_result  # noqa: E402

NEW_TOKENS = 8


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.inference_mode()
def answer_time(model, tokenizer, config: FocusConfig, repeats: int) -> dict:
    case = make_case(tokenizer, 7500, depth=0.5, seed=0)
    ids = tokenizer(case.prompt, return_tensors="pt").input_ids
    engine = FocusEngine(model, tokenizer, config.replace(native_window=4096))
    focus, full = [], []
    for _ in range(repeats):
        engine.prefix_cache.clear()
        seconds, answer = timed(lambda: engine.generate(case.prompt))
        focus.append({"seconds": seconds, "answer": answer, "correct": case.is_correct(answer)})
        seconds, out = timed(lambda: model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                                    pad_token_id=tokenizer.eos_token_id))
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        full.append({"seconds": seconds, "answer": answer, "correct": case.is_correct(answer)})
        print("7.5K", focus[-1], full[-1], flush=True)
    f, p = statistics.median(r["seconds"] for r in focus), statistics.median(r["seconds"] for r in full)
    return {"tokens": ids.shape[1], "focusllm_native_window": 4096, "focusllm_s": f, "full_attention_s": p,
            "speedup": p / f, "focusllm_runs": focus, "full_attention_runs": full}


@torch.inference_mode()
def encode_throughput(model, tokenizer, config: FocusConfig) -> dict:
    engine = FocusEngine(model, tokenizer, config)
    case = make_case(tokenizer, 32000, depth=0.5, seed=1)
    plan = engine._plan(engine.tokenize(case.prompt), engine.config)
    seconds, _ = timed(lambda: engine.encoder.encode(plan, extra_slots=NEW_TOKENS, candidate=False, progress=False,
                                                     batch_tokens=config.encode_batch_tokens))
    lengths = [1 + len(c) for c in plan.chunks]
    flops = forward_flops(model, lengths)
    rate = matmul_rate(model.dtype)
    return {"tokens": sum(lengths), "chunks": len(lengths), "seconds": seconds, "tokens_per_s": sum(lengths) / seconds,
            "flops": flops, "achieved_flops_per_s": flops / seconds, "matmul_flops_per_s": rate,
            "fraction_of_matmul_rate": flops / seconds / rate}


def second_question(model, tokenizer, config: FocusConfig) -> dict:
    engine = FocusEngine(model, tokenizer, config)
    case = make_case(tokenizer, 32000, depth=0.3, seed=2)
    document = case.prompt[: case.prompt.rindex("\n\nWhat is the pass key?")]
    first_prompt = document + "\n\nWhat is the pass key? The pass key is "
    second_prompt = document + "\n\nWhich number were you asked to remember? The number to remember is "
    first_s, first = timed(lambda: engine.generate(first_prompt))
    encoded = engine.stats.chunks_encoded
    second_s, second = timed(lambda: engine.generate(second_prompt))
    return {"tokens": engine.count_tokens(first_prompt), "first_s": first_s, "second_s": second_s,
            "ratio": second_s / first_s, "first_answer": first, "second_answer": second, "passkey": case.passkey,
            "chunks_encoded_first": encoded, "chunks_encoded_second": engine.stats.chunks_encoded - encoded}


def plot(result: dict) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    a = result["answer_at_7_5k"]
    axes[0].bar(["FocusLLM", "full attention"], [a["focusllm_s"], a["full_attention_s"]], color=["C0", "C1"])
    axes[0].set(ylabel="seconds", title=f"answer at {a['tokens']} tokens ({a['speedup']:.2f}x)")
    e = result["encode_32k"]
    axes[1].bar(["matmul peak", "chunk encoding"], [e["matmul_flops_per_s"] / 1e9, e["achieved_flops_per_s"] / 1e9],
                color=["grey", "C0"])
    axes[1].set(ylabel="GFLOP/s", title=f"encoding at 32K: {100 * e['fraction_of_matmul_rate']:.0f}% of matmul")
    s = result["second_question_32k"]
    axes[2].bar(["first question", "second question"], [s["first_s"], s["second_s"]], color=["C1", "C0"])
    axes[2].set(ylabel="seconds", title=f"same 32K document: ratio {s['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(RESULTS / "speed.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model()
    config = FocusConfig(max_new_tokens=NEW_TOKENS, progress=False)
    result = {"model_dtype": str(model.dtype), "config": {k: v for k, v in vars(config).items()},
              "answer_at_7_5k": answer_time(model, tokenizer, config, args.repeats),
              "encode_32k": encode_throughput(model, tokenizer, config),
              "second_question_32k": second_question(model, tokenizer, config)}
    write_result("speed", result)
    plot(result)


if __name__ == "__main__":
    main()
