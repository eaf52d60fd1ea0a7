"""Scale on the embedded model: pass-key up to 128K tokens, encode time and peak memory against the
up-front estimate, and one process against two (torchrun, gloo).

    python -m benchmarks.scale [--lengths 8192 ... 131072] [--seeds-at-max 3]

Every point runs in a fresh process, so its peak resident memory is its own: the peak is read from
``VmHWM`` after resetting it once the model is loaded, and compared with ``engine.estimate_memory``.
Writes results/scale.json and docs/scale.png.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .common import read_whole, result_header, write_json  # noqa: E402
from .plots import save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def child(tokens: int, seed: int, depth: float, full_attention: bool) -> dict:
    """One pass-key case in this process (FocusLLM, or plain decoding for a prompt inside the window)."""
    from focus_core import FocusConfig, FocusEngine
    from focus_core.passkey import make_case

    engine = FocusEngine.from_pretrained(None, FocusConfig(max_new_tokens=16, stop=("\n",), progress=False))
    case = make_case(engine.tokenizer, tokens, depth, seed)
    estimate = engine.estimate_memory(case.prompt)
    if full_attention and engine.count_tokens(case.prompt) + 16 > engine.native_window:
        raise SystemExit("full attention only inside the native window")
    loaded = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this case's
    start = time.perf_counter()
    answer = engine.generate(case.prompt, **(read_whole(engine) if full_attention else {}))
    return {
        "tokens": engine.count_tokens(case.prompt),
        "seed": seed,
        "depth": depth,
        "passkey": case.passkey,
        "answer": answer,
        "correct": case.is_correct(answer),
        "seconds": time.perf_counter() - start,
        "encode_seconds": engine.stats.encode_seconds,
        "estimate_bytes": estimate.total,
        "estimate": vars(estimate),
        "rss_after_load": loaded,
        "peak_rss": _status("VmHWM"),
        "peak_increase": _status("VmHWM") - loaded,
    }


def run_child(tokens: int, seed: int, depth: float, full_attention: bool = False) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", str(tokens), str(seed), str(depth)]
    out = subprocess.run(
        cmd + (["--full-attention"] if full_attention else []), capture_output=True, text=True, cwd=ROOT, check=True
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["peak_over_estimate"] = record["peak_increase"] / record["estimate_bytes"]
    print("FocusLLM" if not full_attention else "full attention", record, flush=True)
    return record


def processes(tokens: int, seeds: int) -> dict:
    """The same pass-key cases on one process and on two (torchrun, gloo): time and identical output."""
    args = ["-m", "focus_core", "passkey", "--tokens", str(tokens), "--seeds", str(seeds), "--quiet"]
    runs = {}
    for n, cmd in (
        (1, [sys.executable, *args]),
        (2, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]),
    ):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip().splitlines()
        answers = [re.sub(r", [\d.]+ s\)$", ")", line) for line in out if line.startswith("seed ")]
        runs[n] = {
            "wall_seconds": time.perf_counter() - start,
            "answers": answers,
            "final_line": out[-1],
            "timing_line": out[-2],
        }
        print(n, runs[n], flush=True)
    return {
        "tokens": tokens,
        "seeds": seeds,
        "runs": runs,
        "time_ratio_2_over_1": runs[2]["wall_seconds"] / runs[1]["wall_seconds"],
        "identical_output": runs[1]["answers"] == runs[2]["answers"] and runs[1]["final_line"] == runs[2]["final_line"],
    }


def plot(result: dict, path: Path) -> None:
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, points in (("FocusLLM", result["curve"]), ("full attention", result["full_attention"])):
        x = [p["tokens"] / 1000 for p in points]
        t_ax.plot(x, [p["seconds"] for p in points], marker="o", label=f"{name}: answer")
        m_ax.plot(x, [p["peak_increase"] / 2**30 for p in points], marker="o", label=f"{name}: peak RSS increase")
    x = [p["tokens"] / 1000 for p in result["curve"]]
    t_ax.plot(x, [p["encode_seconds"] for p in result["curve"]], marker=".", linestyle="--", label="FocusLLM: encoding")
    m_ax.plot(x, [p["estimate_bytes"] / 2**30 for p in result["curve"]], linestyle="--", label="FocusLLM: estimate")
    t_ax.set(xlabel="prompt (K tokens)", ylabel="seconds", title="time")
    m_ax.set(xlabel="prompt (K tokens)", ylabel="GiB", title="memory beyond the loaded model")
    for ax in (t_ax, m_ax):
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--full-attention-lengths", type=int, nargs="*", default=[2048, 4096, 8000])
    parser.add_argument("--seeds-at-max", type=int, default=3)
    parser.add_argument("--process-tokens", type=int, default=32768)
    parser.add_argument("--child", nargs=3, default=None, metavar=("TOKENS", "SEED", "DEPTH"))
    parser.add_argument("--full-attention", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]), float(args.child[2]), args.full_attention)))
        return
    curve = [run_child(n, 0, 0.5) for n in args.lengths]
    longest = max(args.lengths)
    at_max = [curve[-1]] + [run_child(longest, s, s / args.seeds_at_max) for s in range(1, args.seeds_at_max)]
    full = [run_child(n, 0, 0.5, full_attention=True) for n in args.full_attention_lengths]
    result = {
        **result_header("scale"),
        "curve": curve,
        "full_attention": full,
        "at_max": {
            "tokens": longest,
            "cases": at_max,
            "accuracy": sum(c["correct"] for c in at_max) / len(at_max),
            "max_peak_over_estimate": max(c["peak_over_estimate"] for c in at_max),
        },
        "processes": processes(args.process_tokens, 1),
    }
    write_json(ROOT / "benchmarks" / "results" / "scale.json", result)
    plot(result, ROOT / "docs" / "scale.png")
    print(json.dumps({k: result["at_max"][k] for k in ("accuracy", "max_peak_over_estimate")}))
    print(json.dumps({k: v for k, v in result["processes"].items() if k != "runs"}))


if __name__ == "__main__":
    main()
